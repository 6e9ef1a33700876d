"""fitserve against real Keras 3 (torch backend), trained side by side: the cases and the runner.

Each case is a fitserve spec and training config. Keras builds the same model from fitserve's
own Keras export (`keras.models.model_from_json(to_keras_json(spec))`), initializes it, and its
initial weights are written into the fitserve spec as explicit `kernel`/`bias`, so both start
from the same numbers. Both train on standardized iris (app/data/iris.csv, rows in one fixed
shuffled order) with shuffle off, in float32, and the per-epoch history and final weights are
compared. tests/interop/test_keras_parity.py asserts the bar for every case; this module also
writes the measured table:

    .venv/bin/python -m tests.interop.keras_parity --write docs/keras-parity.md
"""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

import models
from models.keras_export import to_keras_json
from models.spec import ActivationName, LossName, NetworkSpec, OptimizerName, TrainingConfig

os.environ.setdefault("KERAS_BACKEND", "torch")
with warnings.catch_warnings():  # Keras' own imports may warn; none of it is ours to fix
    warnings.simplefilter("ignore")
    import keras

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 15
# The bar: per-epoch loss (and val_loss) within LOSS_RTOL relative, final weights within
# WEIGHT_ATOL absolute, metrics within METRIC_ATOL (an accuracy flip on 150 rows is 0.0067).
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
METRIC_ATOL = 1e-5


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Task:
    x: np.ndarray  # (rows, features) float32, standardized
    y_fitserve: np.ndarray  # what fit gets: class indices, or float targets
    y_keras: np.ndarray  # what Keras gets: one-hot for categorical_crossentropy
    output: dict[str, Any]  # the output layer


@cache
def _iris() -> tuple[np.ndarray, np.ndarray]:
    raw = np.loadtxt(ROOT / "app" / "data" / "iris.csv", delimiter=",", skiprows=1, dtype=str)
    x = raw[:, :4].astype(np.float32)
    _, y = np.unique(raw[:, 4], return_inverse=True)
    order = np.random.default_rng(0).permutation(len(x))  # the file is sorted by species
    x, y = x[order], y[order]
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32), y.astype(np.int64)


def task(loss: str, rows: int | None = None) -> Task:
    """Iris as the loss needs it: 3 classes, virginica-or-not, or petal width from the rest."""
    x, y = _iris()
    if loss in ("mse", "mae", "huber"):
        t = Task(x[:, :3], x[:, 3:], x[:, 3:], {"units": 1, "activation": "linear"})
    elif loss == "binary_crossentropy":
        yb = (y == 2).astype(np.int64)
        t = Task(x, yb, yb[:, None].astype(np.float32), {"units": 1, "activation": "sigmoid"})
    elif loss == "categorical_crossentropy":
        t = Task(x, y, np.eye(3, dtype=np.float32)[y], {"units": 3, "activation": "softmax"})
    else:
        t = Task(x, y, y, {"units": 3, "activation": "softmax"})
    if rows is None:
        return t
    return Task(t.x[:rows], t.y_fitserve[:rows], t.y_keras[:rows], t.output)


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    about: str
    loss: str
    hidden: tuple[dict[str, Any], ...]  # layers before the output layer
    training: dict[str, Any] = field(default_factory=dict)  # besides loss, epochs, shuffle
    rows: int | None = None  # a prefix of iris (batch-1 cases stay short)
    output: dict[str, Any] = field(default_factory=dict)  # overrides of the output layer
    differs: str | None = None  # a known difference: why (the table shows by how much)

    def network(self, width: int, output: dict[str, Any]) -> dict[str, Any]:
        layers = [dict(layer) for layer in self.hidden]
        layers[0]["input_dim"] = width
        return {"layers": [*layers, {"type": "dense", **output, **self.output}]}

    def config(self) -> dict[str, Any]:
        base = {
            "loss": self.loss,
            "epochs": EPOCHS,
            "shuffle": False,
            "batch_size": 32,
            "seed": 0,
        }  # fmt: skip (32: the last of 5 batches has 22 rows)
        return {**base, **self.training}


def _dense(units: int = 8, activation: str = "tanh", **more: Any) -> dict[str, Any]:
    return {"type": "dense", "units": units, "activation": activation, **more}


MLP = (_dense(8, "relu"), _dense(8, "tanh"))
# every loss, optimizer and activation the spec accepts: a new one joins the cases by itself
LOSSES = get_args(LossName)
OPTIMIZERS = get_args(OptimizerName)
# Non-default arguments of every optimizer (Keras names), on categorical cross-entropy.
OPTIMIZER_ARGS: dict[str, dict[str, Any]] = {
    "sgd_lr": {"name": "sgd", "learning_rate": 0.1},
    "sgd_momentum": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
    "sgd_nesterov": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.8, "nesterov": True},
    "sgd_weight_decay": {"name": "sgd", "learning_rate": 0.05, "weight_decay": 0.1},
    "adagrad_args": {
        "name": "adagrad",
        "learning_rate": 0.05,
        "initial_accumulator_value": 0.5,
        "epsilon": 1e-5,
    },  # fmt: skip
    "rmsprop_rho_epsilon": {
        "name": "rmsprop",
        "learning_rate": 0.005,
        "rho": 0.8,
        "epsilon": 1e-4,
    },  # fmt: skip
    "rmsprop_centered": {"name": "rmsprop", "centered": True},
    "rmsprop_momentum": {"name": "rmsprop", "momentum": 0.5},
    "rmsprop_centered_momentum": {
        "name": "rmsprop",
        "learning_rate": 0.002,
        "centered": True,
        "momentum": 0.9,
    },  # fmt: skip
    "adam_lr": {"name": "adam", "learning_rate": 0.01},
    "adam_amsgrad": {"name": "adam", "learning_rate": 0.01, "amsgrad": True},
    "adam_betas_epsilon": {
        "name": "adam",
        "learning_rate": 0.02,
        "beta_1": 0.8,
        "beta_2": 0.99,
        "epsilon": 1e-3,
    },  # fmt: skip
    "adam_weight_decay": {"name": "adam", "learning_rate": 0.01, "weight_decay": 0.05},
    "adamw_args": {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.1, "amsgrad": True},
}
ACTIVATIONS = get_args(ActivationName)
_ADAM = {"name": "adam", "learning_rate": 0.01}


def cases() -> list[Case]:
    out: list[Case] = []
    for loss in LOSSES:
        for opt in OPTIMIZERS:
            out.append(
                Case(
                    f"{loss}-{opt}",
                    f"{opt} defaults, full batch",
                    loss,
                    MLP,
                    {"optimizer": opt, "batch_size": "full"},
                )  # fmt: skip
            )
    for key, opt in OPTIMIZER_ARGS.items():
        args = ", ".join(f"{k}={v}" for k, v in opt.items() if k != "name")
        out.append(
            Case(
                key,
                f"{opt['name']}({args}), batch 64",
                "categorical_crossentropy",
                MLP,
                {"optimizer": opt, "batch_size": 64},
            )  # fmt: skip
        )
    out += [
        Case("full_batch", "batch gradient descent, adam lr 0.01",
             "sparse_categorical_crossentropy", MLP, {"optimizer": _ADAM, "batch_size": "full"}),
        Case("batch_1_sgd", "batch 1 (stochastic), sgd momentum, 40 rows", "mse", MLP,
             {"optimizer": {"name": "sgd", "momentum": 0.5}, "batch_size": 1}, rows=40),
        Case("batch_1_adam", "batch 1, adam, 40 rows", "binary_crossentropy", MLP,
             {"optimizer": "adam", "batch_size": 1}, rows=40),
        Case("l1_l2_kernel_bias", "L1 and L2 on kernels and biases, adam", "mse",
             (_dense(8, "relu", kernel_regularizer={"l1": 0.01, "l2": 0.02},
                     bias_regularizer={"l1": 0.005, "l2": 0.01}),),
             {"optimizer": _ADAM}, output={"kernel_regularizer": {"l2": 0.05}}),
        Case("l2_sgd_validation", "L2 with validation_split: the penalty is in val_loss too",
             "categorical_crossentropy",
             (_dense(8, "relu", kernel_regularizer={"l2": 0.01}),),
             {"optimizer": {"name": "sgd", "learning_rate": 0.1}, "validation_split": 0.2}),
        Case("validation_split", "validation_split 0.3: val_loss and val_accuracy",
             "sparse_categorical_crossentropy", MLP,
             {"optimizer": _ADAM, "validation_split": 0.3}),
        Case("validation_mae", "validation_split 0.2 on regression: val_mae", "mae", MLP,
             {"optimizer": "rmsprop", "validation_split": 0.2}),
        Case("batch_normalization", "Dense (no bias), BatchNormalization (momentum 0.9), "
             "validation 0.2", "categorical_crossentropy",
             (_dense(8, "linear", use_bias=False), {"type": "batch_normalization",
              "momentum": 0.9}, {"type": "activation", "activation": "relu"}),
             {"optimizer": _ADAM, "validation_split": 0.2}),
        Case("bias_before_batch_normalization", "as above with a bias on the Dense layer",
             "categorical_crossentropy",
             (_dense(8, "linear"), {"type": "batch_normalization", "momentum": 0.9},
              {"type": "activation", "activation": "relu"}),
             {"optimizer": _ADAM, "validation_split": 0.2},
             differs="not a rule difference: batch normalization subtracts the batch mean, so "
             "the gradient of the bias before it is 0 in exact arithmetic and float32 rounding "
             "noise (~1e-9) in both frameworks; Adam's m / sqrt(v) turns that noise into "
             "full-size steps, so that bias (and the moving mean after it) follows each "
             "framework's own rounding. The training loss still agrees to ~1e-7; drop the bias "
             "(use_bias: false), as is usual before batch normalization"),
        Case("layer_normalization", "LayerNormalization, validation 0.2",
             "categorical_crossentropy",
             (_dense(8, "linear"), {"type": "layer_normalization", "epsilon": 1e-5},
              {"type": "activation", "activation": "elu"}),
             {"optimizer": "rmsprop", "validation_split": 0.2}),
        Case("clipnorm", "clipnorm 0.05 (per weight), sgd", "categorical_crossentropy", MLP,
             {"optimizer": {"name": "sgd", "learning_rate": 0.1}, "clipnorm": 0.05}),
        Case("global_clipnorm", "global_clipnorm 0.1, adam", "mse", MLP,
             {"optimizer": _ADAM, "global_clipnorm": 0.1}),
        Case("clipvalue", "clipvalue 0.01, rmsprop", "binary_crossentropy", MLP,
             {"optimizer": "rmsprop", "clipvalue": 0.01}),
    ]  # fmt: skip
    for act in ACTIVATIONS:
        out.append(
            Case(
                f"activation_{act}",
                f"hidden {act}, adam lr 0.01, batch 64",
                "mse",
                (_dense(8, act), _dense(4, act)),
                {"optimizer": _ADAM, "batch_size": 64},
            )  # fmt: skip
        )
    out += [
        Case("leaky_relu_alpha", "leaky_relu alpha 0.05 (a LeakyReLU layer in Keras)", "mse",
             (_dense(8, "leaky_relu", alpha=0.05),), {"optimizer": _ADAM}),
        Case("elu_alpha", "elu alpha 0.5 (an ELU layer in Keras)", "mse",
             (_dense(8, "elu", alpha=0.5),), {"optimizer": _ADAM}),
        Case("activation_layers", "Activation, leaky_relu and elu layers after linear Dense",
             "sparse_categorical_crossentropy",
             (_dense(8, "linear"), {"type": "activation", "activation": "leaky_relu",
              "alpha": 0.1}, _dense(8, "linear"), {"type": "activation", "activation": "elu",
              "alpha": 0.7}, _dense(6, "linear"), {"type": "activation", "activation": "swish"}),
             {"optimizer": _ADAM}),
        Case("dropout_rate_0", "Dropout(0.0) layers (dropout itself: test_dropout_*)",
             "categorical_crossentropy", (_dense(8, "relu"), {"type": "dropout", "rate": 0.0}),
             {"optimizer": _ADAM}),
    ]  # fmt: skip
    sgd_fast = {"name": "sgd", "learning_rate": 0.3, "momentum": 0.9}
    out += [
        Case("early_stopping_patience", "early stopping on loss, patience 2, min_delta 0.02",
             "sparse_categorical_crossentropy", MLP,
             {"optimizer": _ADAM, "epochs": 40,
              "early_stopping": {"monitor": "loss", "patience": 2, "min_delta": 0.02}}),
        Case("early_stopping_restore", "val_loss, patience 3, restore_best_weights",
             "categorical_crossentropy", MLP,
             {"optimizer": sgd_fast, "epochs": 40, "validation_split": 0.3,
              "early_stopping": {"patience": 3, "restore_best_weights": True}}),
        # lr 0.2, not 0.3: at 0.3 the shuffled iris' validation loss drifts to 2e-5 relative by
        # epoch 12 from float32 rounding alone (weights agree to 1.5e-6), which tests chaos
        # rather than the baseline rule.
        Case("early_stopping_baseline",
             "val_loss, baseline 0.05 never beaten, patience 4, sgd lr 0.2 momentum 0.9",
             "categorical_crossentropy", MLP,
             {"optimizer": {**sgd_fast, "learning_rate": 0.2}, "epochs": 40,
              "validation_split": 0.2,
              "early_stopping": {"patience": 4, "baseline": 0.05}}),
        Case("early_stopping_start_from_epoch", "accuracy (max), start_from_epoch 8, patience 1",
             "binary_crossentropy", MLP,
             {"optimizer": _ADAM, "epochs": 40,
              "early_stopping": {"monitor": "accuracy", "patience": 1, "start_from_epoch": 8,
                                 "restore_best_weights": True}}),
        Case("early_stopping_val_mae", "val_mae, min_delta 0.001, patience 2, restore best",
             "huber", MLP,
             {"optimizer": sgd_fast, "epochs": 40, "validation_split": 0.25,
              "early_stopping": {"monitor": "val_mae", "min_delta": 0.001, "patience": 2,
                                 "restore_best_weights": True}}),
    ]  # fmt: skip
    out += [
        Case("saturated_softmax", "adam lr 3, 32 relu units: softmax outputs below 1e-7",
             "categorical_crossentropy", (_dense(32, "relu"),),
             {"optimizer": {"name": "adam", "learning_rate": 3.0}, "batch_size": "full"},
             differs="Keras clips softmax probabilities to [1e-7, 1 - 1e-7] before the log; "
             "fitserve computes the loss from the logits (log-softmax), so where a "
             "probability drops below 1e-7 Keras' loss is capped at -log(1e-7) = 16.1 and its "
             "gradient is 0, while fitserve's keeps the true value and gradient"),
    ]  # fmt: skip
    return out


# ---------------------------------------------------------------- running both


@dataclass
class Run:
    history: dict[str, list[float]]  # loss, val_loss, accuracy/mae, val_...
    weights: list[np.ndarray]  # Keras get_weights() order, layer by layer
    epochs: int


@dataclass
class Deviation:
    case: Case
    epochs: tuple[int, int]  # (Keras, fitserve) epochs trained
    loss_rel: float
    val_loss_rel: float | None
    metric_abs: float
    weights_abs: float

    @property
    def passed(self) -> bool:
        return (
            self.epochs[0] == self.epochs[1]
            and self.loss_rel <= LOSS_RTOL
            and (self.val_loss_rel is None or self.val_loss_rel <= LOSS_RTOL)
            and self.metric_abs <= METRIC_ATOL
            and self.weights_abs <= WEIGHT_ATOL
        )


# Keras 3.15's Variable.numpy() (get_weights, EarlyStopping's best weights) trips a NumPy 2
# DeprecationWarning about __array__'s copy keyword: Keras' to fix, ignored only around Keras calls.
KERAS_NUMPY_WARNING = r"__array__ implementation doesn't accept a copy keyword"


def keras_weights(model_or_layer: Any) -> list[np.ndarray]:
    """get_weights() without the warning: the torch tensors behind the variables, copied."""
    return [v.value.detach().cpu().numpy().copy() for v in model_or_layer.weights]


def keras_model(network: dict[str, Any], seed: int) -> Any:
    keras.utils.set_random_seed(seed)
    return keras.models.model_from_json(to_keras_json(network))


def with_keras_weights(network: dict[str, Any], model: Any) -> dict[str, Any]:
    """The spec with the Keras model's initial Dense weights written in as kernel/bias."""
    spec = NetworkSpec.model_validate(network)
    layers = []
    for name, layer in zip(spec.layer_names(), network["layers"], strict=True):
        if layer["type"] == "dense":
            kernel, *bias = keras_weights(model.get_layer(name))
            layer = {**layer, "kernel": kernel.tolist()}
            if bias:
                layer["bias"] = bias[0].tolist()
        layers.append(layer)
    return {"layers": layers}


def fitserve_weights(module: torch.nn.Module) -> list[np.ndarray]:
    """fitserve's weights in Keras' get_weights() order and layout."""
    out: list[np.ndarray] = []
    for layer in module.layers:  # type: ignore[union-attr]
        if isinstance(layer, models.layers.Dense):
            out.append(layer.weight.detach().T.numpy())
            if layer.bias is not None:
                out.append(layer.bias.detach().numpy())
        elif isinstance(layer, models.layers.BatchNormalization):
            out += [t.detach().numpy() for t in (layer.gamma, layer.beta, layer.moving_mean,
                                                 layer.moving_variance)]  # fmt: skip
        elif isinstance(layer, torch.nn.LayerNorm):
            out += [layer.weight.detach().numpy(), layer.bias.detach().numpy()]
    return out


def keras_optimizer(training: TrainingConfig) -> Any:
    opt = training.optimizer_config.model_dump()
    name = opt.pop("name")
    clip = {k: getattr(training, k) for k in ("clipnorm", "global_clipnorm", "clipvalue")}
    cls = {"sgd": keras.optimizers.SGD, "adagrad": keras.optimizers.Adagrad,
           "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
           "adamw": keras.optimizers.AdamW}[name]  # fmt: skip
    return cls(**{k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                  for k, v in opt.items()}, **clip)  # fmt: skip


_KERAS_LOSS = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber": "huber"}


def keras_metric(loss: str) -> Any:
    if loss == "binary_crossentropy":
        return keras.metrics.BinaryAccuracy(name="accuracy")
    if loss == "categorical_crossentropy":
        return keras.metrics.CategoricalAccuracy(name="accuracy")
    if loss == "sparse_categorical_crossentropy":
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    return keras.metrics.MeanAbsoluteError(name="mae")


def run_keras(case: Case, t: Task, network: dict[str, Any], model: Any) -> Run:
    training = TrainingConfig.model_validate(case.config())
    model.compile(
        optimizer=keras_optimizer(training),
        loss=_KERAS_LOSS.get(case.loss, case.loss),
        metrics=[keras_metric(case.loss)],
    )
    callbacks = []
    es = training.early_stopping
    if es is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=es.monitor,
                min_delta=es.min_delta,
                patience=es.patience,
                mode=es.mode,
                baseline=es.baseline,
                restore_best_weights=es.restore_best_weights,
                start_from_epoch=es.start_from_epoch,
            )  # fmt: skip
        )
    bs = training.batch_size
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=KERAS_NUMPY_WARNING, category=DeprecationWarning)
        history = model.fit(
            t.x, t.y_keras, batch_size=len(t.x) if bs == "full" else bs,
            epochs=training.epochs, shuffle=False, validation_split=training.validation_split,
            callbacks=callbacks, verbose=0,
        )  # fmt: skip
    h = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return Run(h, keras_weights(model), len(h["loss"]))


def run_fitserve(case: Case, t: Task, network: dict[str, Any]) -> Run:
    result = models.fit(network, case.config(), t.x, t.y_fitserve, device="cpu")
    h: dict[str, list[float]] = {}
    for record in result.history:
        for key, value in record.as_dict().items():
            if key in ("loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae"):
                h.setdefault(key, []).append(float(value))
    return Run(h, fitserve_weights(result.module), len(result.history))


def _rel(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))


def compare(case: Case) -> Deviation:
    t = task(case.loss, case.rows)
    net = case.network(t.x.shape[1], t.output)
    threads = torch.get_num_threads()
    # one thread, as fit itself chooses for networks this small: on a busy machine every OpenMP
    # barrier waits for a descheduled thread (20 ms per tiny matmul measured on 2 shared cores)
    torch.set_num_threads(1)
    try:
        model = keras_model(net, seed=0)
        net = with_keras_weights(net, model)
        k, f = run_keras(case, t, net, model), run_fitserve(case, t, net)
    finally:
        torch.set_num_threads(threads)
    n = min(k.epochs, f.epochs)
    metric = "mae" if "mae" in k.history else "accuracy"
    metric_abs = max(
        float(np.max(np.abs(np.subtract(k.history[m][:n], f.history[m][:n]))))
        for m in (metric, f"val_{metric}")
        if m in k.history
    )
    return Deviation(
        case=case,
        epochs=(k.epochs, f.epochs),
        loss_rel=_rel(k.history["loss"][:n], f.history["loss"][:n]),
        val_loss_rel=(
            _rel(k.history["val_loss"][:n], f.history["val_loss"][:n])
            if "val_loss" in k.history
            else None
        ),
        metric_abs=metric_abs,
        weights_abs=max(
            float(np.max(np.abs(a - b))) for a, b in zip(k.weights, f.weights, strict=True)
        ),  # fmt: skip
    )


# ---------------------------------------------------------------- the document


def _verdict(d: Deviation) -> str:
    if d.passed:
        return "yes"
    return "no: documented below" if d.case.differs else "**no**"


def table(rows: list[Deviation]) -> str:
    lines = [
        "| case | what | epochs (Keras / fitserve) | loss, max rel. diff | val_loss, max rel. "
        "diff | metric, max abs. diff | final weights, max abs. diff | within the bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in rows:
        val = "—" if d.val_loss_rel is None else f"{d.val_loss_rel:.1e}"
        lines.append(
            f"| `{d.case.id}` | {d.case.about} | {d.epochs[0]} / {d.epochs[1]} "
            f"| {d.loss_rel:.1e} | {val} | {d.metric_abs:.1e} | {d.weights_abs:.1e} "
            f"| {_verdict(d)} |"
        )
    return "\n".join(lines)


def document(rows: list[Deviation]) -> str:
    failed = [d.case.id for d in rows if not d.passed and d.case.differs is None]
    notes = "\n".join(f"- `{d.case.id}`: {d.case.differs}." for d in rows if d.case.differs)
    unintended = f"; outside it unintentionally: {', '.join(failed)}" if failed else ""
    return f"""# fitserve vs Keras 3: measured parity

Generated by `tests/interop/keras_parity.py` (the same cases `tests/interop/test_keras_parity.py`
asserts); regenerate with

    .venv/bin/python -m tests.interop.keras_parity --write docs/keras-parity.md

Each case trains the same network in real Keras {keras.__version__} (`KERAS_BACKEND=torch`,
torch {torch.__version__}) and in `models.fit`, from identical initial weights (Keras initializes,
its weights are copied into the fitserve spec), on standardized iris (150 rows, one fixed
shuffled order; regression cases predict petal width from the other three features), shuffle
off, float32, {EPOCHS} epochs unless the case says otherwise (early stopping cases allow 40).
Networks are 4-8-8-out (relu, tanh) unless the case says otherwise.

The bar: every epoch's loss and val_loss within {LOSS_RTOL:g} relative, the reported metric
(binary / categorical / sparse categorical accuracy, or mae) within {METRIC_ATOL:g}, final
weights within {WEIGHT_ATOL:g} absolute, and the same number of epochs (early stopping).
Of {len(rows)} cases, {sum(d.passed for d in rows)} are within it{unintended}.

Dropout with a rate above 0 can't match step by step (the masks come from different random
streams); `test_dropout_*` in the test module check it separately (same inference-mode outputs
for the same weights, Keras' drop rate and 1/(1-rate) scaling in training). Initializers are
compared as distributions in `tests/interop/test_keras_initializers.py`.

{table(rows)}

Documented differences (the test asserts each is still there, so this list can't go stale):

{notes}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="write the Markdown table here")
    parser.add_argument("-k", help="only cases whose id contains this")
    args = parser.parse_args()
    rows = []
    for case in cases():
        if args.k and args.k not in case.id:
            continue
        rows.append(compare(case))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.write:
        args.write.write_text(document(rows))


if __name__ == "__main__":
    main()
