"""The training loop: `fit(network, training, x, y)` -> FitResult.

The dataset lives on the training device as tensors; each epoch draws a seeded permutation and
runs its batches through one `TrainStep` (models/step.py) — eagerly (models/eager.py) or replayed
from a CUDA graph (models/cuda_graph.py). Loss, metric and gradient norms are summed on the device
and read to the host once per epoch (`.item()` in the step would be a CPU-GPU sync per batch),
when the Trainer finishes the epoch: record, early stopping, callbacks.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from models import cuda_graph, eager, placement, precision, randomness
from models import data as D
from models.build import as_network, as_training, build, check_compatible, count_params
from models.early_stopping import EarlyStopping
from models.errors import SpecError, StopTraining, TrainingError
from models.losses import make_objective
from models.memory import rows_per_step, widest
from models.optim import make_optimizer
from models.results import EpochRecord, FitResult
from models.resume import check_resume, make_checkpoint, restore
from models.spec import NetworkSpec, TrainingConfig, split_rows
from models.step import EpochInputs, EpochTotals, TrainRows, TrainStep
from models.tokens import TokenLists, as_tokens, batch_rows
from models.weights import Checkpoint

# rows * the widest tensor's width per validation forward pass: bounds its memory (sized by the
# input alone, a 2 -> 65,536 network evaluated 8 M rows at once: 2 TB)
_EVAL_CHUNK_ELEMENTS = 1 << 24
# Below this many multiply-adds per step (6 * batch * params: forward + backward), CPU training
# runs on one thread: the ops are too small to split, and on a busy machine every OpenMP barrier
# waits for a descheduled thread — measured 10x slower steps for the iris model on 2 shared cores.
_SINGLE_THREAD_FLOPS = 1 << 23


class Callback:
    """Hooks into the loop, no-ops by default: subclass and override the ones you need.

    Hooks run on the training thread. `on_batch_end` runs after every optimizer step, so it must
    not read tensors to the host (that is a device sync) — set a flag or count, and act in
    `on_epoch_end`. Raise `StopTraining` from any hook, or set `trainer.stop_training = True`, to
    end training after the current step (batch hook) or epoch; `fit` then returns normally.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch (also when resuming)."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """After each optimizer step; cheap, no host sync."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After each epoch (and early stopping's update); `trainer.checkpoint()` works here."""

    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        """After training ended, however it ended (not after an exception)."""


def _overrides(callback: Callback, hook: str) -> bool:
    """Whether `callback` implements `hook`, so the loop can skip no-op batch hooks entirely."""
    return getattr(type(callback), hook) is not getattr(Callback, hook)


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:n`; anything else is refused."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d{1,3}))?", name)
    if m is None:
        raise SpecError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", loc=("device",))
    if not torch.cuda.is_available():
        raise SpecError(f"device {name} asked for but CUDA is not available here", loc=("device",))
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise SpecError(f"{name}: only {torch.cuda.device_count()} CUDA device(s)", loc=("device",))
    return torch.device("cuda", index)


def cpu_threads_for(batch_size: int, n_params: int) -> int | None:
    """1 when a CPU step is too small to share between threads; None: keep torch's setting."""
    return 1 if 6 * batch_size * n_params < _SINGLE_THREAD_FLOPS else None


def _derive_seeds(seed: int) -> tuple[int, int, int]:
    # independent streams for init, shuffling and dropout from one user seed
    init, shuffle, dropout = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(shuffle), int(dropout)


class Trainer:
    """One training run; `fit` is `Trainer(...).run()`. Callbacks receive it as `trainer`."""

    def __init__(
        self,
        network: NetworkSpec | dict[str, Any],
        training: TrainingConfig | dict[str, Any],
        x: Any,
        y: Any,
        *,
        device: str | torch.device = "auto",
        callbacks: Sequence[Callback] = (),
        resume: Checkpoint | None = None,
    ) -> None:
        self.network, self.config = as_network(network), as_training(training)
        self.device = resolve_device(device)
        self.callbacks = list(callbacks)
        self._batch_hooks = [cb for cb in self.callbacks if _overrides(cb, "on_batch_end")]
        self.stop_training = False
        self.history: list[EpochRecord] = []
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps this run
        self.precision: str | None = None  # observed from the first epoch's steps

        # token lists (a category_encoding network) stay values + offsets; features a matrix
        xt: torch.Tensor | TokenLists = (
            as_tokens(x, self.network)
            if self.network.encoding is not None
            else D.features(x, n_features=None)
        )
        rows = xt.rows if isinstance(xt, TokenLists) else xt.shape[0]
        n_features = None if isinstance(xt, TokenLists) else xt.shape[1]
        yt = D.targets(y, rows)
        units = self.network.output_units
        n_classes = D.target_classes(yt, loss=self.config.loss, output_units=units)
        classification = n_classes is not None
        check_compatible(
            self.network,
            self.config,
            task="classification" if classification else "regression",
            n_features=n_features,
            n_outputs=None if classification else yt.shape[1],
            n_classes=n_classes,
            rows=rows,
        )
        self.objective = make_objective(
            self.config.loss,
            output_activation=self.network.output_activation,
            output_units=units,
            classification=classification,
        )
        n_train = (
            split_rows(rows, self.config.validation_split) if self.config.validation_split else rows
        )
        self.n_train = n_train
        self.batch_size = rows_per_step(self.config, rows=rows)
        self.data_shape = {"rows": rows, "n_features": n_features or self.network.input_dim}
        self.step_mode = "eager"
        self.device_reason = f"{self.device}, as asked"
        if str(device) == "auto":
            where = placement.choose(
                self.network,
                self.config,
                n_features=self.network.input_dim,
                n_train=n_train,
                batch_size=self.batch_size,
                epochs=self.config.epochs,
                n_params=count_params(self.network),
                cuda_available=self.device.type == "cuda",
            )
            self.device, self.device_reason = where.device, where.reason

        precision.check_supported(self.device, self.config.precision)
        if resume is not None:
            check_resume(
                resume, network=self.network, config=self.config, data_shape=self.data_shape
            )
            self.seed = resume.seed
            self.standardization = resume.standardization
        else:
            self.seed = (
                self.config.seed
                if self.config.seed is not None
                else int(np.random.SeedSequence().generate_state(1)[0])
            )
            self.standardization = (
                D.Standardization.fit(xt[:n_train])
                if self.config.standardize and isinstance(xt, torch.Tensor)
                else None
            )
        init_seed, self._shuffle_seed, self._dropout_seed = _derive_seeds(self.seed)

        dev = self.device
        xt = xt.to(dev)
        if self.standardization is not None and isinstance(xt, torch.Tensor):
            xt = self.standardization.apply(xt)
        target, labels = self.objective.prepare(yt.to(dev))
        x_train, x_val = (
            (xt.take(0, n_train), xt.take(n_train, rows))
            if isinstance(xt, TokenLists)
            else (xt[:n_train], xt[n_train:])
        )
        self._train = TrainRows(x_train, target[:n_train], labels[:n_train])
        self._val = (x_val, target[n_train:], labels[n_train:]) if n_train < rows else None

        self.module = build(self.network, seed=init_seed)
        if dev.type != "cpu":
            self.module.to(dev)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.config.optimizer_config, self.params)
        self.early_stopping = (
            EarlyStopping(self.config.early_stopping) if self.config.early_stopping else None
        )
        self._layer_names, self._norm_matrix = self._grad_norm_layout()
        self._resume = resume
        if resume is not None:
            restore(
                resume,
                module=self.module,
                optimizer=self.optimizer,
                early_stopping=self.early_stopping,
                device=dev,
            )
            self.history = [EpochRecord.from_dict(d) for d in resume.history]
            self.epoch = resume.epoch
            self.stop_training = resume.stop_training

    def _grad_norm_layout(self) -> tuple[list[str], torch.Tensor]:
        """Layer names with parameters, and a (layers + 1, params) 0/1 matrix: its product with the
        squared per-parameter norms is each layer's squared norm and, in the last row, the total."""
        by_param = {id(p): name.split(".")[1] for name, p in self.module.named_parameters()}
        layers = list(dict.fromkeys(by_param[id(p)] for p in self.params))
        owner = [layers.index(by_param[id(p)]) for p in self.params]
        rows = [[float(o == i) for o in owner] for i in range(len(layers))]
        rows.append([1.0] * len(owner))
        return layers, torch.tensor(rows, device=self.device)

    def _precision(self) -> tuple[Any, ExitStack]:
        """The autocast context for the forward pass, and a stack that restores global settings
        (TF32, CPU threads) when training ends."""
        stack = ExitStack()
        n_params = sum(p.numel() for p in self.params)
        threads = cpu_threads_for(self.batch_size, n_params)
        if self.device.type == "cpu" and threads is not None:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        autocast = precision.autocast(self.device, self.config.precision)
        if self.device.type == "cuda" and self.config.precision != "fp32":
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", previous)
        return autocast, stack

    def epoch_inputs(self) -> EpochInputs:
        """What an epoch runner reads: the step (on the current optimizer), rows and batch size."""
        step = TrainStep(
            self.module,
            self.optimizer,
            self.objective,
            self.params,
            clipnorm=self.config.clipnorm,
            global_clipnorm=self.config.global_clipnorm,
            clipvalue=self.config.clipvalue,
        )
        return EpochInputs(
            step,
            self._train,
            self.batch_size,
            self._norm_matrix,
            self._after_step,
            input_dim=self.network.input_dim,
        )

    # ------------------------------------------------------------ the loop

    def run(self) -> FitResult:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        autocast, restore_settings = self._precision()
        with restore_settings, torch.random.fork_rng(devices=cuda, device_type="cuda"):
            inputs = self.epoch_inputs()
            # full-batch steps replayed from a CUDA graph where that pays; None: the eager loop
            graph, self.step_mode = cuda_graph.plan(
                inputs, epochs_left=self.config.epochs - self.epoch, precision=self.config.precision
            )
            for cb in self.callbacks:
                cb.on_train_begin(self)
            try:
                while self.epoch < self.config.epochs and not self.stop_training:
                    started = time.perf_counter()
                    # dropout draws from the device's global generator, reseeded per epoch
                    randomness.seed_dropout(self._dropout_seed, self.epoch, self.device)
                    perm = (
                        randomness.epoch_permutation(
                            self._shuffle_seed, self.epoch, self.n_train, self.device
                        )
                        if self.config.shuffle
                        else None
                    )
                    self.module.train()
                    if graph is None:
                        totals = eager.run_epoch(inputs, perm, autocast)
                    else:
                        totals = graph.run_epoch(perm)
                        if graph.fallback is not None:  # the next epochs run eagerly
                            self.step_mode = f"eager (fallback): {graph.fallback}"
                            graph = None
                    self._finish_epoch(started, totals)
            except StopTraining:
                self.stop_training = True
        return self._result()

    def _after_step(self) -> bool:
        """Count a step and run the batch hooks; True when one of them stopped training."""
        self.step += 1
        if not self._batch_hooks:
            return False
        try:
            for cb in self._batch_hooks:
                cb.on_batch_end(self)
        except StopTraining:
            self.stop_training = True
        return self.stop_training

    def _finish_epoch(self, started: float, totals: EpochTotals) -> None:
        """The epoch's record from the runner's sums (and the validation pass), then early
        stopping and the callbacks."""
        epoch = self.epoch + 1
        if self.precision is None:  # before validation, which runs in float32
            self.precision = precision.observed(self.module, self.device)
        parts = [
            totals.loss.reshape(1).double(),
            totals.metric.reshape(1).double(),
            totals.norm.double(),
        ]
        if self._val is not None:
            val_loss, val_metric, val_rows = self._evaluate()
            parts += [val_loss.reshape(1).double(), val_metric.reshape(1)]
        values = torch.cat(parts).tolist()  # the epoch's one host sync
        target = self._train.target
        width = target.shape[1] if target.dim() == 2 else 1
        metric = self.objective.metric
        loss = values[0] / totals.rows
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} in epoch {epoch}: training diverged. Lower the learning "
                f"rate (now {self.optimizer.param_groups[0]['lr']}), set clipnorm (e.g. 1.0), or "
                "set standardize: true if the features have large values",
                epoch=epoch,
            )
        norms = [v / max(totals.steps, 1) for v in values[2 : 2 + totals.norm.shape[0]]]
        record = EpochRecord(
            epoch=epoch,
            loss=loss,
            metrics={metric: values[1] / self.objective.metric_count(totals.rows, width)},
            learning_rate=float(self.optimizer.param_groups[0]["lr"]),
            seconds=0.0,
            grad_norm=norms[-1],
            layer_grad_norms=dict(zip(self._layer_names, norms[:-1], strict=True)),
        )
        if self._val is not None:
            record.val_loss = values[-2]
            record.val_metrics = {
                f"val_{metric}": values[-1] / self.objective.metric_count(val_rows, width)
            }
        record.seconds = time.perf_counter() - started
        self.epoch = epoch
        self.history.append(record)
        if self.early_stopping is not None and self.early_stopping.update(
            epoch, record.as_dict(), self.module
        ):
            self.stop_training = True
        for cb in self.callbacks:
            try:
                cb.on_epoch_end(self, record)
            except StopTraining:
                self.stop_training = True

    @torch.inference_mode()
    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        assert self._val is not None
        x, target, labels = self._val
        module, objective = self.module, self.objective
        fwd = module.logits if objective.from_logits else module
        module.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        chunk = max(1, _EVAL_CHUNK_ELEMENTS // widest(self.network)[0])
        rows = x.rows if isinstance(x, TokenLists) else x.shape[0]
        for start in range(0, rows, chunk):
            out = fwd(batch_rows(x, slice(start, start + chunk)))
            tb, lb = target[start : start + chunk], labels[start : start + chunk]
            loss_sum.add_(objective.loss(out.float(), tb), alpha=out.shape[0])
            metric_sum.add_(objective.metric_sum(out.float(), tb, lb))
        loss = loss_sum / rows
        if module.has_penalty:  # Keras adds the regularization losses to val_loss too
            loss = loss + module.penalty()
        return loss, metric_sum, rows

    def _result(self) -> FitResult:
        stopped = None
        if self.early_stopping is not None:
            self.early_stopping.restore(self.module)
            stopped = self.early_stopping.stopped_epoch
        if stopped is None and self.epoch < self.config.epochs:
            stopped = self.epoch
        self.module.eval()
        result = FitResult(
            module=self.module,
            history=self.history,
            standardization=self.standardization,
            stopped_epoch=stopped,
            device=str(self.device),
            seed=self.seed,
            network=self.network,
            training=self.config,
            best_epoch=self.early_stopping.best_epoch if self.early_stopping else None,
            precision=self.precision or "fp32",
            device_reason=self.device_reason,
            step_mode=self.step_mode,
        )
        for cb in self.callbacks:
            try:
                cb.on_train_end(self, result)
            except StopTraining:
                pass
        return result

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> Checkpoint:
        """The state after the last completed epoch (call from on_epoch_end)."""
        es = self.early_stopping
        return make_checkpoint(
            network=self.network,
            training=self.config,
            epoch=self.epoch,
            seed=self.seed,
            module=self.module,
            optimizer=self.optimizer,
            history=self.history,
            data_shape=self.data_shape,
            standardization=self.standardization,
            early_stopping=es,
            stop_training=self.stop_training,
        )


def fit(
    network: NetworkSpec | dict[str, Any],
    training: TrainingConfig | dict[str, Any],
    x: Any,
    y: Any,
    *,
    device: str | torch.device = "auto",
    callbacks: Sequence[Callback] = (),
    resume: Checkpoint | None = None,
) -> FitResult:
    """Train `network` on (x, y) as `training` says; see docs/architecture.md for the contract."""
    return Trainer(network, training, x, y, device=device, callbacks=callbacks, resume=resume).run()
