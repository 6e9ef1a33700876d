"""Training steps replayed from a CUDA graph: the fast path `fit` takes on CUDA by itself.

A small network's step is dozens of tiny kernels; launched one by one from Python the GPU idles
between them. Here the whole full-batch step — batch gather, forward, loss, backward, gradient
norms, clipping, optimizer step and the epoch's metric sums — is captured once in a CUDA graph
and replayed with a single launch per step (torch docs, "CUDA Graphs: whole-network capture").

How it stays the same training as the eager loop in models/train.py:

- Shapes are static: every full batch replays the graph; the epoch's last partial batch (if any)
  runs eagerly through the same `_step` function. Token lists (a category_encoding network) are
  gathered into a (batch, longest document) id matrix padded with -1, the same shape every step,
  and encoded into the graph's fixed (batch, num_tokens) buffer by the network's first layer.
- The batch is gathered inside the graph from a device copy of the epoch's permutation, indexed
  by a device step counter the graph advances itself: no host work per step but the replay.
- Dropout draws from the default CUDA generator, which torch registers with every capture: each
  replay advances its Philox offset by the graph's total, so masks differ from step to step.
- Loss, metric and gradient-norm sums accumulate into fixed device tensors the graph writes in
  place, and are read once per epoch as before: the figures are the eager loop's, not estimates.
- The optimizer runs with `capturable=True` (its step counters live on the device).
- The first WARMUP_STEPS full-batch steps run eagerly on a side stream (lazily created optimizer
  state, cuBLAS workspaces, autograd's streams) and count as training steps like any other.

Anything that prevents capture — not CUDA, an optimizer torch can't capture, too few steps to
pay for the capture, a capture error, a learning rate changed after capture — falls back to the
eager loop, and the reason is logged and kept in `Trainer.step_mode`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, cast

import torch

from models import precision, randomness
from models.errors import StopTraining
from models.optim import clip_gradients
from models.tokens import TokenLists, token_width

if TYPE_CHECKING:
    from models.train import Trainer

log = logging.getLogger(__name__)

# Eager steps before capture; the torch docs' whole-network example warms up with 3.
WARMUP_STEPS = 3
# A capture costs tens of milliseconds (and an empty_cache); below this many full-batch steps in
# the whole run the eager loop finishes first.
MIN_GRAPH_STEPS = 32
# FITSERVE_CUDA_GRAPHS=0 turns the fast path off (benchmarks compare both ways with it);
# "emulate" takes this path on any device with the graph replaced by an eager call of the same
# body, so its bookkeeping is tested on machines without a GPU.
ENV_SWITCH = "FITSERVE_CUDA_GRAPHS"
# Optimizers whose torch implementation can step under capture (capturable=True or fused with
# device-side step counters); anything else trains eagerly.
_CAPTURABLE = (
    torch.optim.Adam,  # AdamW subclasses it
    torch.optim.SGD,  # no step counter; its fused kernel has no host reads after the first step
    torch.optim.RMSprop,
    torch.optim.Adagrad,  # fused: the step counter is a device tensor
)
_UNCAPTURED_WARNING = r"This instance was constructed with capturable=True"


def switch() -> str:
    """The FITSERVE_CUDA_GRAPHS setting: "on" (default), "off" or "emulate"."""
    value = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "emulate" if value == "emulate" else "on"


def eligibility(trainer: Trainer, *, require_cuda: bool = True) -> str | None:
    """None when `trainer`'s full-batch steps can be replayed from a graph; else why not."""
    if switch() == "off":
        return f"{ENV_SWITCH}=0"
    if require_cuda and trainer.device.type != "cuda":
        return "not on CUDA"
    opt = trainer.optimizer
    if not isinstance(opt, _CAPTURABLE):
        return f"{type(opt).__name__} can't step under CUDA graph capture"
    if isinstance(opt, torch.optim.Adagrad) and not all(g.get("fused") for g in opt.param_groups):
        return "Adagrad steps under capture only with its fused kernel"
    bs = trainer._batch_size()
    x = trainer._train[0]
    if isinstance(x, TokenLists) and token_width(x) > trainer.network.input_dim:
        return (
            "a document is longer than num_tokens: its padded batch would be larger than the "
            "encoded one"
        )
    full_per_epoch = trainer.n_train // bs if bs else 0
    remaining_epochs = max(0, trainer.config.epochs - trainer.epoch)
    total = full_per_epoch * remaining_epochs
    if total < MIN_GRAPH_STEPS + WARMUP_STEPS:
        return f"only {total} full-batch steps to run: a capture would not pay for itself"
    return None


class GraphEpochs:
    """Runs the trainer's epochs with full-batch steps replayed from one captured graph.

    `capture=False` runs the very same ops eagerly where the graph would be replayed (no CUDA
    needed): tests use it to check this path's bookkeeping against the eager loop on the CPU.
    """

    def __init__(self, trainer: Trainer, *, capture: bool = True) -> None:
        self.t = trainer
        self.capture = capture
        self._capturing = False
        dev = trainer.device
        self.bs = trainer._batch_size()
        self.full_steps = trainer.n_train // self.bs
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.metric_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.norm_sum = torch.zeros(trainer._norm_matrix.shape[0], dtype=torch.float64, device=dev)
        self.order = torch.empty(self.full_steps * self.bs, dtype=torch.int64, device=dev)
        self.counter = torch.zeros(1, dtype=torch.int64, device=dev)
        self.arange = torch.arange(trainer.n_train, device=dev)
        x = trainer._train[0]
        # every batch padded to the longest document: a static shape the graph can replay
        self.token_width = token_width(x) if isinstance(x, TokenLists) else None
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.warm = 0  # eager full-batch steps run so far (warm-up before capture)
        self.lrs: list[float] = []
        self.side = torch.cuda.Stream(dev) if capture else None
        # autocast's weight-cast cache must be off under capture (torch: make_graphed_callables)
        self.autocast = precision.autocast(dev, trainer.config.precision, cache_enabled=False)
        if capture:
            self._set_capturable(True)

    # ------------------------------------------------------------ one step, eager or captured

    def _step(self, idx: torch.Tensor, rows: int) -> None:
        t = self.t
        module, opt, objective = t.module, t.optimizer, t.objective
        x, target, labels = t._train
        xb = (
            x.padded(idx, width=self.token_width)
            if isinstance(x, TokenLists)
            else x.index_select(0, idx)
        )
        tb = target.index_select(0, idx)
        lb = tb if labels is target else labels.index_select(0, idx)
        fwd = module.logits if objective.from_logits else module
        with self.autocast:
            out = fwd(xb)
            loss = objective.loss(out, tb)
            penalty = module.penalty() if module.has_penalty else None
            if penalty is not None:
                loss = loss + penalty
        if not self._capturing:  # under capture, backward allocates the graph's static grads
            opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = cast(list[torch.Tensor], [p.grad for p in t.params])  # all set by backward
        norms = torch.stack(torch._foreach_norm(grads))  # (params,)
        self.norm_sum.add_(torch.mv(t._norm_matrix, norms * norms).sqrt_())
        cfg = t.config
        if cfg.clipnorm or cfg.global_clipnorm or cfg.clipvalue:
            clip_gradients(
                grads,
                norms,
                clipnorm=cfg.clipnorm,
                global_clipnorm=cfg.global_clipnorm,
                clipvalue=cfg.clipvalue,
            )
        opt.step()
        self.loss_sum.add_(loss.detach(), alpha=rows)
        self.metric_sum.add_(objective.metric_sum(out.detach(), tb, lb))

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
                current = torch.cuda.current_stream(self.t.device)
                self.side.wait_stream(current)
                with torch.cuda.stream(self.side):
                    self._step(idx, rows)
                current.wait_stream(self.side)
            else:
                self._step(idx, rows)

    # ------------------------------------------------------------ capture and fallback

    def _set_capturable(self, on: bool) -> None:
        opt, dev = self.t.optimizer, self.t.device
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
        t = self.t
        try:
            t.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            self._capturing = True
            try:
                with torch.cuda.graph(graph):
                    self._graphed_step()
            finally:
                self._capturing = False
        except Exception as exc:  # noqa: BLE001 - any capture failure means: train eagerly
            torch.cuda.synchronize(t.device)  # a sticky CUDA error re-raises here, as it should
            t.optimizer.zero_grad(set_to_none=True)
            self._give_up(f"CUDA graph capture failed ({type(exc).__name__}: {exc})")
            return False
        self.graph = graph.replay
        self._graph_object = graph  # keeps the graph (and its memory pool) alive
        self.lrs = [g["lr"] for g in t.optimizer.param_groups]
        self.counter.fill_(step)
        log.info("training steps replayed from a CUDA graph (batch %d)", self.bs)
        return True

    def _give_up(self, reason: str) -> None:
        log.warning("training eagerly: %s", reason)
        self.graph = None
        self.side = None
        self.t.step_mode = f"eager: {reason}"
        self.t._graph = None  # later epochs take train.py's own loop
        if self.capture:
            self._set_capturable(False)

    # ------------------------------------------------------------ one epoch

    def run_epoch(self, started: float) -> None:
        t = self.t
        n, bs = t.n_train, self.bs
        perm = (
            randomness.epoch_permutation(t._shuffle_seed, t.epoch, n, t.device)
            if t.config.shuffle
            else None
        )
        order = perm if perm is not None else self.arange
        self.order.copy_(order[: self.full_steps * bs])
        self.counter.zero_()  # the graph gathers step s's rows at counter == s
        self.loss_sum.zero_()
        self.metric_sum.zero_()
        self.norm_sum.zero_()
        t.module.train()
        hooks = t._batch_hooks
        steps = 0
        for s in range(self.full_steps):
            if self.graph is None and self.warm >= WARMUP_STEPS and t._graph is self:
                self._capture(s)
            elif self.graph is not None and self.lrs and self.lrs != self._current_lrs():
                self._give_up("the learning rate changed after capture")
            if self.graph is not None:
                self.graph()
            else:
                self._eager(order[s * bs : (s + 1) * bs], bs)
                self.warm += 1
            steps += 1
            t.step += 1
            if hooks and self._run_hooks():
                break
        else:
            rest = n - self.full_steps * bs
            if rest:
                self._eager(order[self.full_steps * bs :], rest)
                steps += 1
                t.step += 1
                if hooks:
                    self._run_hooks()
        rows_seen = min(steps * bs, n)
        t._finish_epoch(started, steps, rows_seen, self.loss_sum, self.metric_sum, self.norm_sum)

    def _current_lrs(self) -> list[float]:
        return [g["lr"] for g in self.t.optimizer.param_groups]

    def _run_hooks(self) -> bool:
        """Batch hooks after a step; True when they asked training to stop."""
        t = self.t
        try:
            for cb in t._batch_hooks:
                cb.on_batch_end(t)
        except StopTraining:
            t.stop_training = True
        return t.stop_training


def plan(trainer: Trainer) -> GraphEpochs | None:
    """The graph runner for `trainer`, or None (reason in `trainer.step_mode`, and logged)."""
    emulate = switch() == "emulate"
    reason = eligibility(trainer, require_cuda=not emulate)
    if reason is not None:
        trainer.step_mode = f"eager: {reason}"
        if trainer.device.type == "cuda":
            log.info("training eagerly: %s", reason)
        return None
    trainer.step_mode = "cuda_graph (emulated)" if emulate else "cuda_graph"
    return GraphEpochs(trainer, capture=not emulate)
