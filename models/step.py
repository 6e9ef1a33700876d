"""One training step, and what an epoch of them needs and gives back.

`TrainStep` is the step both epoch runners take — the eager loop (models/eager.py) and the
CUDA-graph replay (models/cuda_graph.py, which captures this very function): forward, loss (plus
the layers' L1/L2 penalty), backward, per-parameter gradient norms, Keras' clipping, optimizer
step. A runner returns its `EpochTotals`; the Trainer alone turns them into an EpochRecord.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from models.layers import Network, NetworkInput
from models.losses import Objective
from models.optim import clip_gradients
from models.tokens import TokenLists


class TrainStep:
    """forward -> loss -> backward -> gradient norms -> clipping -> optimizer step."""

    def __init__(
        self,
        module: Network,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        params: list[torch.nn.Parameter],
        *,
        clipnorm: float | None,
        global_clipnorm: float | None,
        clipvalue: float | None,
    ) -> None:
        self.module, self.optimizer, self.objective, self.params = (
            module,
            optimizer,
            objective,
            params,
        )
        self.clipnorm, self.global_clipnorm, self.clipvalue = clipnorm, global_clipnorm, clipvalue
        self._clip = bool(clipnorm or global_clipnorm or clipvalue)
        self._forward = module.logits if objective.from_logits else module
        self._has_penalty = module.has_penalty

    def __call__(
        self, xb: NetworkInput, tb: torch.Tensor, autocast: Any, *, clear_grads: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step on the batch (xb, tb); returns (loss, output, per-parameter gradient norms),
        detached and still on the device. `clear_grads=False` under CUDA-graph capture, where
        backward allocates the graph's own gradient tensors."""
        with autocast:
            out = self._forward(xb)
            loss = self.objective.loss(out, tb)
            if self._has_penalty:
                loss = loss + self.module.penalty()
        if clear_grads:
            for p in self.params:  # optimizer.zero_grad(set_to_none=True) without its profiling
                p.grad = None
        loss.backward()
        grads = cast(list[torch.Tensor], [p.grad for p in self.params])  # all set by backward
        norms = torch._foreach_norm(grads)  # one 0-d tensor per parameter
        if self._clip:
            clip_gradients(
                grads,
                torch.stack(norms),
                clipnorm=self.clipnorm,
                global_clipnorm=self.global_clipnorm,
                clipvalue=self.clipvalue,
            )
        self.optimizer.step()
        return loss.detach(), out.detach(), norms


@dataclass(frozen=True)
class TrainRows:
    """The training split on the device, as the step consumes it."""

    x: torch.Tensor | TokenLists  # (rows, n_features), or token lists (category_encoding)
    target: torch.Tensor  # what the loss takes (Objective.prepare)
    labels: torch.Tensor  # what accuracy compares with

    @property
    def n(self) -> int:
        return self.x.rows if isinstance(self.x, TokenLists) else int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device


@dataclass(frozen=True)
class EpochInputs:
    """What an epoch runner reads from the run: the step, the rows, the batch size, and the
    (layers + 1, params) 0/1 matrix that turns squared parameter norms into layer norms."""

    step: TrainStep
    rows: TrainRows
    batch_size: int
    norm_matrix: torch.Tensor
    # Called after every step: counts it, runs the batch hooks; True when training should stop.
    after_step: Callable[[], bool]
    input_dim: int  # the network's input width (num_tokens for token lists)


@dataclass(frozen=True)
class EpochTotals:
    """What an epoch runner gives back: its sums, still on the device (the Trainer reads them)."""

    steps: int
    rows: int  # rows seen (fewer than the split when a hook stopped the epoch early)
    loss: torch.Tensor  # sum over rows of the per-row loss, float64 ()
    metric: torch.Tensor  # correct predictions or summed absolute error, float64 ()
    norm: torch.Tensor  # sum over steps of each layer's and the global gradient norm, (layers + 1,)
