"""An epoch of eager training steps, its sums gathered without a host sync per step."""

from __future__ import annotations

from typing import Any

import torch

from models.step import EpochInputs, EpochTotals
from models.tokens import batch_rows

_FLUSH_STEPS = 256  # steps of losses, outputs and gradient norms kept before they are reduced
_FLUSH_ELEMENTS = 1 << 22  # ... or fewer steps, so the kept outputs stay below 16 MB


def run_epoch(inputs: EpochInputs, perm: torch.Tensor | None, autocast: Any) -> EpochTotals:
    """One pass over the training rows in `perm`'s order (or as stored), batch by batch."""
    step, rows, bs = inputs.step, inputs.rows, inputs.batch_size
    x, target, n = rows.x, rows.target, rows.n
    sums = EpochSums(inputs, perm)
    steps = 0
    for start in range(0, n, bs):
        if perm is not None:
            idx = perm[start : start + bs]
            xb, tb = batch_rows(x, idx), target[idx]
        else:
            xb, tb = batch_rows(x, slice(start, start + bs)), target[start : start + bs]
        loss, out, norms = step(xb, tb, autocast)
        steps += 1
        sums.add(loss, out, norms, end=min(start + bs, n))
        if inputs.after_step():
            break
    rows_seen = min(steps * bs, n)
    return sums.totals(steps, rows_seen)


class EpochSums:
    """One epoch's loss, metric and gradient-norm sums, reduced from per-step values in batches.

    The step only appends device tensors (no host sync); `flush` reduces the pending steps with a
    handful of ops. Rows are in the epoch's order: rows [done, end) of `perm`.
    """

    def __init__(self, inputs: EpochInputs, perm: torch.Tensor | None) -> None:
        self.rows, self.perm = inputs.rows, perm
        self.objective, self.norm_matrix = inputs.step.objective, inputs.norm_matrix
        dev = self.rows.device
        self.loss = torch.zeros((), dtype=torch.float64, device=dev)
        self.metric = torch.zeros((), dtype=torch.float64, device=dev)
        self.norm = torch.zeros(self.norm_matrix.shape[0], dtype=torch.float64, device=dev)
        self.losses: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.norms: list[tuple[torch.Tensor, ...]] = []
        self.done = 0  # rows already reduced
        per_step = inputs.batch_size * max(1, self.objective.output_units)
        self.flush_every = max(1, min(_FLUSH_STEPS, _FLUSH_ELEMENTS // per_step))

    def add(
        self, loss: torch.Tensor, out: torch.Tensor, norms: tuple[torch.Tensor, ...], *, end: int
    ) -> None:
        """A step's values, kept on the device; reduced every `flush_every` steps (on a small
        network each op is a measurable share of the step)."""
        self.losses.append(loss)
        self.outputs.append(out)
        self.norms.append(norms)
        if len(self.losses) == self.flush_every:
            self.flush(end)

    def totals(self, steps: int, rows: int) -> EpochTotals:
        self.flush(rows)
        return EpochTotals(steps, rows, self.loss, self.metric, self.norm)

    def flush(self, end: int) -> None:
        if not self.losses:
            return
        rows = slice(self.done, end)
        target, labels = self.rows.target, self.rows.labels
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
        self.metric.add_(self.objective.metric_sum(out.float(), target, labels))
        flat = torch.stack([n for step in self.norms for n in step]).view(len(self.norms), -1)
        # (steps, params) -> each step's per-layer and global norms, summed over the steps
        layer = torch.mm(flat.square(), self.norm_matrix.T).sqrt_()
        self.norm.add_(layer.sum(0, dtype=torch.float64))
        self.losses.clear()
        self.outputs.clear()
        self.norms.clear()
        self.done = end
