"""One epoch's loss, metric and gradient-norm sums, gathered without a host sync per step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from models.train import Trainer

_FLUSH_STEPS = 256  # steps of losses, outputs and gradient norms kept before they are reduced
_FLUSH_ELEMENTS = 1 << 22  # ... or fewer steps, so the kept outputs stay below 16 MB


class EpochSums:
    """One epoch's loss, metric and gradient-norm sums, reduced from per-step values in batches.

    The step only appends device tensors (no host sync); `flush` reduces the pending steps with a
    handful of ops. Rows are in the epoch's order: rows [done, end) of `perm`.
    """

    def __init__(self, trainer: Trainer, perm: torch.Tensor | None, batch_size: int) -> None:
        self.trainer, self.perm = trainer, perm
        dev = trainer.device
        self.loss = torch.zeros((), dtype=torch.float64, device=dev)
        self.metric = torch.zeros((), dtype=torch.float64, device=dev)
        self.norm = torch.zeros(trainer._norm_matrix.shape[0], dtype=torch.float64, device=dev)
        self.losses: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.norms: list[tuple[torch.Tensor, ...]] = []
        self.done = 0  # rows already reduced
        per_step = batch_size * max(1, trainer.network.output_units)
        self.flush_every = max(1, min(_FLUSH_STEPS, _FLUSH_ELEMENTS // per_step))

    def flush(self, end: int) -> None:
        if not self.losses:
            return
        t = self.trainer
        rows = slice(self.done, end)
        _, target, labels = t._train
        if self.perm is not None:
            idx = self.perm[rows]
            target, labels = target[idx], labels[idx]
        else:
            target, labels = target[rows], labels[rows]
        out = torch.cat(self.outputs)  # (rows, units)
        # per-batch mean losses weighted by batch rows: the epoch loss is the mean over rows
        sizes = [o.shape[0] for o in self.outputs]
        weights = torch.tensor(sizes, dtype=torch.float64, device=out.device)
        self.loss.add_(torch.dot(torch.stack(self.losses).double(), weights))
        self.metric.add_(t.objective.metric_sum(out.float(), target, labels))
        flat = torch.stack([n for step in self.norms for n in step]).view(len(self.norms), -1)
        # (steps, params) -> each step's per-layer and global norms, summed over the steps
        layer = torch.mm(flat.square(), t._norm_matrix.T).sqrt_()
        self.norm.add_(layer.sum(0, dtype=torch.float64))
        self.losses.clear()
        self.outputs.clear()
        self.norms.clear()
        self.done = end
