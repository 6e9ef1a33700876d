"""Losses and the metric that goes with them, fused on logits where the output is softmax/sigmoid.

An `Objective` turns the user's targets into what its loss consumes once, before training, so the
step does no conversions: class indices stay int64 for cross-entropy, become a float column for
binary cross-entropy and one-hot rows for a regression loss on classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.errors import SpecError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _categorical(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # log_softmax inside cross_entropy: finite for any finite logits, unlike log(softmax(x));
    # target is int64 class indices (batch,) or float class probabilities (batch, classes)
    return F.cross_entropy(logits, target)


def _binary(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # log-sum-exp form of log(sigmoid(x)); Keras clips probabilities to [1e-7, 1 - 1e-7] instead
    return F.binary_cross_entropy_with_logits(logits, target)


def _huber(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.huber_loss(out, target, delta=1.0)  # Keras Huber delta=1.0


LOSSES: dict[str, LossFn] = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": _huber,
    "binary_crossentropy": _binary,
    "categorical_crossentropy": _categorical,
    "sparse_categorical_crossentropy": _categorical,
}
_FUSED = {"binary_crossentropy": "sigmoid", "categorical_crossentropy": "softmax",
          "sparse_categorical_crossentropy": "softmax"}  # fmt: skip


@dataclass(frozen=True)
class Objective:
    """A loss bound to a network's output and a kind of target.

    from_logits: the loss takes the network's pre-activation output (`Network.logits`).
    metric: "accuracy" (classification) or "mae" (regression).
    """

    loss_name: str
    output_activation: str
    classification: bool
    n_classes: int
    output_units: int
    from_logits: bool

    @property
    def metric(self) -> str:
        return "accuracy" if self.classification else "mae"

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.loss_name](out, target)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """The network's final output from what the step computed."""
        if not self.from_logits:
            return out
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else torch.softmax(out, -1)

    def metric_sum(
        self, out: torch.Tensor, target: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Correct predictions (classification) or summed absolute error (regression), on device."""
        if not self.classification:
            return (self.activate(out) - target).abs().sum()
        if out.shape[-1] == 1:
            # one unit: a logit > 0 is p > 0.5; a raw output (mse on classes) is thresholded at 0.5
            threshold = 0.0 if self.from_logits else 0.5
            return ((out[:, 0] > threshold) == labels).sum()
        return (out.argmax(-1) == labels).sum()

    def metric_count(self, rows: int, target_width: int) -> int:
        """What metric_sum is divided by: rows for accuracy, elements for mae."""
        return rows if self.classification else rows * target_width

    def prepare(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss target, accuracy labels) from class indices, one-hot rows or numbers."""
        if not self.classification:
            return y, y
        if y.dtype.is_floating_point:  # one-hot or class probabilities (categorical_crossentropy)
            return y, y.argmax(-1)
        labels = y
        if self.loss_name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            return y, labels
        if self.loss_name == "binary_crossentropy":
            return y.to(torch.float32).unsqueeze(-1), labels
        # a regression loss on classes compares with one-hot rows, or with the index for one unit
        if self.output_units == 1:
            return y.to(torch.float32).unsqueeze(-1), labels
        return F.one_hot(y, self.n_classes).to(torch.float32), labels


def make_objective(
    loss: str, *, output_activation: str, output_units: int, classification: bool
) -> Objective:
    """Bind `loss` to the output layer; fused whenever the output activation is the loss's own."""
    if loss not in LOSSES:
        raise SpecError(
            f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}", loc=("training", "loss")
        )
    fused = _FUSED.get(loss)
    if fused is not None and output_activation != fused:
        raise SpecError(
            f"{loss} needs a {fused} output layer, "
            f"the last layer's activation is {output_activation}",
            loc=("network", "layers", -1, "activation"),
        )
    n_classes = (2 if output_units == 1 else output_units) if classification else 0
    return Objective(
        loss_name=loss,
        output_activation=output_activation,
        classification=classification,
        n_classes=n_classes,
        output_units=output_units,
        from_logits=fused is not None,
    )
