"""Training steps replayed from a CUDA graph: the path `fit` takes on CUDA by itself.

A small network's step is dozens of tiny kernels; launched one by one from Python the GPU idles
between them. Here the whole full-batch step — batch gather, forward, loss, backward, gradient
norms, clipping, optimizer step and the epoch's metric sums — is captured once in a CUDA graph
and replayed with a single launch per step (torch docs, "CUDA Graphs: whole-network capture").

How it stays the same training as the eager loop (models/eager.py):

- Every step, captured or not, is models/step.py's `TrainStep`, the eager loop's own.
- Shapes are static: every full batch replays the graph; the epoch's last partial batch (if any)
  runs eagerly through the same step. Token lists (a category_encoding network) are gathered
  into a (batch, longest document) id matrix padded with -1, the same shape every step, and
  encoded into the graph's fixed (batch, num_tokens) buffer by the network's first layer.
- The batch is gathered inside the graph from a device copy of the epoch's permutation, indexed
  by a device step counter the graph advances itself: no host work per step but the replay.
- Dropout draws from the default CUDA generator, which torch registers with every capture: each
  replay advances its Philox offset by the graph's total, so masks differ from step to step.
- Loss, metric and gradient-norm sums accumulate into fixed device tensors the graph writes in
  place, and are read once per epoch as before: the figures are the eager loop's, not estimates.
- The optimizer keeps its step counter on the device and reads nothing back to the host
  (models/optim.py).
- The first WARMUP_STEPS full-batch steps run eagerly on a side stream (lazily created optimizer
  state, cuBLAS workspaces, autograd's streams) and count as training steps like any other.

Anything that prevents capture — not CUDA, an optimizer torch can't capture, too few steps to
pay for the capture, a capture error, a learning rate changed after capture — falls back to the
eager loop, and the reason is logged and returned (`plan`, `GraphEpochs.fallback`) for the
Trainer to report as its step mode: "eager: <why>" when the graph path was never taken,
"eager (fallback): <why>" when it was and then given up.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch

from models.optim import KerasOptimizer
from models.precision import autocast
from models.step import EpochInputs, EpochTotals
from models.tokens import TokenLists, token_width

log = logging.getLogger(__name__)

# Eager steps before capture; the torch docs' whole-network example warms up with 3.
WARMUP_STEPS = 3
# A capture costs tens of milliseconds (and an empty_cache); below this many full-batch steps in
# the whole run the eager loop finishes first.
MIN_GRAPH_STEPS = 32
# FITSERVE_CUDA_GRAPHS=0 turns this path off (benchmarks compare both ways with it);
# "emulate" takes this path on any device with the graph replaced by an eager call of the same
# body, so its bookkeeping is tested on machines without a GPU.
ENV_SWITCH = "FITSERVE_CUDA_GRAPHS"
# Optimizers that can step under capture: fitserve's own (models/optim.py: foreach updates, the
# step counter and bias corrections on the device, state allocated up front); anything else (a
# torch.optim optimizer swapped in) trains eagerly.
_CAPTURABLE = (KerasOptimizer,)
_UNCAPTURED_WARNING = r"This instance was constructed with capturable=True"


def switch() -> str:
    """The FITSERVE_CUDA_GRAPHS setting: "on" (default), "off" or "emulate"."""
    value = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "emulate" if value == "emulate" else "on"


def eligibility(inputs: EpochInputs, *, epochs_left: int, require_cuda: bool = True) -> str | None:
    """None when the full-batch steps of the `epochs_left` epochs still to run can be replayed
    from a graph; else why not."""
    if switch() == "off":
        return f"{ENV_SWITCH}=0"
    if require_cuda and inputs.rows.device.type != "cuda":
        return "not on CUDA"
    opt = inputs.step.optimizer
    if not isinstance(opt, _CAPTURABLE):
        return f"{type(opt).__name__} can't step under CUDA graph capture"
    x = inputs.rows.x
    if isinstance(x, TokenLists) and token_width(x) > inputs.input_dim:
        return (
            "a document is longer than num_tokens: its padded batch would be larger than the "
            "encoded one"
        )
    bs = inputs.batch_size
    total = (inputs.rows.n // bs if bs else 0) * max(0, epochs_left)
    if total < MIN_GRAPH_STEPS + WARMUP_STEPS:
        return f"only {total} full-batch steps to run: a capture would not pay for itself"
    return None


def plan(
    inputs: EpochInputs, *, epochs_left: int, precision: str
) -> tuple[GraphEpochs | None, str]:
    """The graph runner for these epochs, or None; and the step mode to report ("cuda_graph",
    or "eager: <why not>", also logged on CUDA)."""
    emulate = switch() == "emulate"
    reason = eligibility(inputs, epochs_left=epochs_left, require_cuda=not emulate)
    if reason is not None:
        if inputs.rows.device.type == "cuda":
            log.info("training eagerly: %s", reason)
        return None, f"eager: {reason}"
    mode = "cuda_graph (emulated)" if emulate else "cuda_graph"
    return GraphEpochs(inputs, precision=precision, capture=not emulate), mode


class GraphEpochs:
    """Runs epochs with their full-batch steps replayed from one captured graph.

    `capture=False` runs the very same ops eagerly where the graph would be replayed (no CUDA
    needed): tests use it to check this path's bookkeeping against the eager loop on the CPU.
    Once `fallback` is set (why the graph was given up), the Trainer runs the remaining epochs
    eagerly; the epoch in progress finishes here without the graph.
    """

    def __init__(self, inputs: EpochInputs, *, precision: str, capture: bool = True) -> None:
        self.inputs, self.step = inputs, inputs.step
        self.capture = capture
        self.fallback: str | None = None
        self._capturing = False
        rows, self.bs = inputs.rows, inputs.batch_size
        dev = rows.device
        self.device = dev
        self.full_steps = rows.n // self.bs
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.metric_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.norm_sum = torch.zeros(inputs.norm_matrix.shape[0], dtype=torch.float64, device=dev)
        self.order = torch.empty(self.full_steps * self.bs, dtype=torch.int64, device=dev)
        self.counter = torch.zeros(1, dtype=torch.int64, device=dev)
        self.arange = torch.arange(rows.n, device=dev)
        # every batch padded to the longest document: a static shape the graph can replay
        self.token_width = token_width(rows.x) if isinstance(rows.x, TokenLists) else None
        self.graph: Any = None  # torch.cuda.CUDAGraph's replay once captured
        self.warm = 0  # eager full-batch steps run so far (warm-up before capture)
        self.lrs: list[float] = []
        self.side = torch.cuda.Stream(dev) if capture else None
        # autocast's weight-cast cache must be off under capture (torch: make_graphed_callables)
        self.autocast = autocast(dev, precision, cache_enabled=False)
        if capture:
            self._set_capturable(True)

    # ------------------------------------------------------------ one epoch

    def run_epoch(self, perm: torch.Tensor | None) -> EpochTotals:
        n, bs = self.inputs.rows.n, self.bs
        order = perm if perm is not None else self.arange
        self.order.copy_(order[: self.full_steps * bs])
        self.counter.zero_()  # the graph gathers step s's rows at counter == s
        self.loss_sum.zero_()
        self.metric_sum.zero_()
        self.norm_sum.zero_()
        after_step = self.inputs.after_step
        steps = 0
        for s in range(self.full_steps):
            if self.graph is None and self.warm >= WARMUP_STEPS and self.fallback is None:
                self._capture(s)
            elif self.graph is not None and self.lrs and self.lrs != self._current_lrs():
                self._give_up("the learning rate changed after capture")
            if self.graph is not None:
                self.graph()
            else:
                self._eager(order[s * bs : (s + 1) * bs], bs)
                self.warm += 1
            steps += 1
            if after_step():
                break
        else:
            rest = n - self.full_steps * bs
            if rest:
                self._eager(order[self.full_steps * bs :], rest)
                steps += 1
                after_step()  # the epoch ends here either way
        rows_seen = min(steps * bs, n)
        return EpochTotals(steps, rows_seen, self.loss_sum, self.metric_sum, self.norm_sum)

    # ------------------------------------------------------------ one step, eager or captured

    def _step(self, idx: torch.Tensor, rows: int) -> None:
        """models.step's TrainStep on the rows `idx`, its values added to the fixed sums."""
        train = self.inputs.rows
        x = train.x
        xb = (
            x.padded(idx, width=self.token_width)
            if isinstance(x, TokenLists)
            else x.index_select(0, idx)
        )
        tb = train.target.index_select(0, idx)
        lb = tb if train.labels is train.target else train.labels.index_select(0, idx)
        # under capture, backward allocates the graph's static grads
        loss, out, norms = self.step(xb, tb, self.autocast, clear_grads=not self._capturing)
        stacked = torch.stack(norms)  # (params,)
        self.norm_sum.add_(torch.mv(self.inputs.norm_matrix, stacked * stacked).sqrt_())
        self.loss_sum.add_(loss, alpha=rows)
        self.metric_sum.add_(self.step.objective.metric_sum(out, tb, lb))

    def _graphed_step(self) -> None:
        """The captured body: gather this step's rows by the device counter, then step."""
        steps, bs = self.full_steps, self.bs
        idx = self.order.view(steps, bs).index_select(0, self.counter).view(bs)
        self.counter.add_(1)
        self._step(idx, bs)

    def _eager(self, idx: torch.Tensor, rows: int) -> None:
        with warnings.catch_warnings():
            # capturable=True optimizers warn when stepped outside a graph: warm-up and the last
            # partial batch do that on purpose
            warnings.filterwarnings("ignore", message=_UNCAPTURED_WARNING)
            if self.side is not None and self.graph is None:
                # warm-up on a side stream, as torch requires before a whole-network capture
                current = torch.cuda.current_stream(self.device)
                self.side.wait_stream(current)
                with torch.cuda.stream(self.side):
                    self._step(idx, rows)
                current.wait_stream(self.side)
            else:
                self._step(idx, rows)

    # ------------------------------------------------------------ capture and fallback

    def _set_capturable(self, on: bool) -> None:
        opt, dev = self.step.optimizer, self.device
        for group in opt.param_groups:
            if "capturable" in group:
                group["capturable"] = on
        if on:  # a resumed optimizer may hold its step counters on the host
            for state in opt.state.values():
                step = state.get("step")
                if isinstance(step, torch.Tensor) and step.device != dev:
                    state["step"] = step.to(device=dev, dtype=torch.float32)

    def _capture(self, step: int) -> bool:
        if not self.capture:
            self.graph = self._graphed_step  # the same body, called eagerly
            self.lrs = self._current_lrs()
            self.counter.fill_(step)
            return True
        opt = self.step.optimizer
        try:
            opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            self._capturing = True
            try:
                with torch.cuda.graph(graph):
                    self._graphed_step()
            finally:
                self._capturing = False
        except Exception as exc:  # noqa: BLE001 - any capture failure means: train eagerly
            torch.cuda.synchronize(self.device)  # a sticky CUDA error re-raises here, as it should
            opt.zero_grad(set_to_none=True)
            self._give_up(f"CUDA graph capture failed ({type(exc).__name__}: {exc})")
            return False
        self.graph = graph.replay
        self._graph_object = graph  # keeps the graph (and its memory pool) alive
        self.lrs = self._current_lrs()
        self.counter.fill_(step)
        log.info("training steps replayed from a CUDA graph (batch %d)", self.bs)
        return True

    def _give_up(self, reason: str) -> None:
        log.warning("training eagerly: %s", reason)
        self.graph = None
        self.side = None
        self.fallback = reason  # later epochs take the eager loop
        if self.capture:
            self._set_capturable(False)

    def _current_lrs(self) -> list[float]:
        return [g["lr"] for g in self.step.optimizer.param_groups]
