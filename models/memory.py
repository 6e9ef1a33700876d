"""The memory one training step's activations take, estimated from the spec alone (nothing is
allocated), so that a job that can't fit is refused when it is submitted rather than failing on
a worker with an allocator error.

Per row of a batch, a step holds, in float32 (4 bytes a value: the CPU always trains in fp32, and
at submit it is not known whether a GPU will train the job in bf16):

- forward: the network's input and every layer's output, which autograd keeps for the backward
  pass. A dense layer with a non-linear activation keeps two tensors of its width (x @ W.T + b
  and the activation's output), every other layer one (a dropout's mask, a normalization's
  float32 copy of its input are counted as that one: same order of size);
- backward: the gradient arriving at the widest tensor and the one it produces, alive together:
  two more of the widest.

    bytes = batch x 4 x (kept widths + 2 x widest)

The widest tensor dominates as soon as one layer is much wider than the others, which is what
`batch x widest layer x 4 bytes, forward and backward` says in short. The estimate leaves out
what is not per row (weights, gradients and optimizer state: `count_params` x 4 x up to 4) and
the allocator's slack, so real peaks run somewhat above it; a limit on it is a guard against
steps orders of magnitude too large, not a precise fit.

For example the network 2 -> 65,536 (relu) -> 1 has 262,145 parameters, yet batch_size "full"
on 300,000 rows would hold 300,000 x 4 x (2 + 2 x 65,536 + 1 + 2 x 65,536) = 315 GB; the
course's Reuters network (10,000 token ids encoded -> 64 -> 64 -> 46) at batch 512 holds 62 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.build import as_network, as_training
from models.network_spec import CategoryEncoding, Dense
from models.training_spec import TrainingConfig, split_rows

DTYPE_BYTES = 4  # float32


@dataclass(frozen=True)
class StepMemory:
    """One training step's activation estimate: `bytes` = `batch` x `bytes_per_row`."""

    batch: int  # rows in a step's batch
    bytes_per_row: int
    widest: int  # the widest tensor's width: the input's or a layer's output
    widest_layer: int | None  # that layer's index in the spec; None when the input is widest

    @property
    def bytes(self) -> int:
        return self.batch * self.bytes_per_row


def rows_per_step(training: TrainingConfig | dict[str, Any], *, rows: int) -> int:
    """Rows in one step's batch: the training rows (after validation_split) for "full", else
    batch_size, but never more than the training rows."""
    config = as_training(training)
    train_rows = max(1, split_rows(rows, config.validation_split))
    size = config.batch_size
    return train_rows if size == "full" else min(int(size), train_rows)


def widest(network: Any) -> tuple[int, int | None]:
    """(width, layer index) of the widest tensor a forward pass makes; index None: the input."""
    spec = as_network(network)
    best, where = spec.input_dim, None
    for i, width in enumerate(spec.widths()):
        if width > best:
            best, where = width, i
    return best, where


def step_memory(
    network: Any, training: TrainingConfig | dict[str, Any], *, rows: int
) -> StepMemory:
    """The activation estimate of one training step on a dataset of `rows` rows."""
    spec = as_network(network)
    kept = (
        spec.input_dim
    )  # the batch itself (a category_encoding layer's output: the encoded batch)
    for layer, width in zip(spec.layers, spec.widths(), strict=True):
        if isinstance(layer, CategoryEncoding):
            continue  # counted as the input
        activated = isinstance(layer, Dense) and layer.activation != "linear"
        kept += 2 * width if activated else width
    width, where = widest(spec)
    per_row = DTYPE_BYTES * (kept + 2 * width)
    return StepMemory(
        batch=rows_per_step(training, rows=rows),
        bytes_per_row=per_row,
        widest=width,
        widest_layer=where,
    )
