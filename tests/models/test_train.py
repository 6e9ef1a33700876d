"""fit(): every building block trains, Keras semantics, callbacks, errors, reproducibility."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from models import Callback, FitResult, SpecError, StopTraining, Trainer, TrainingError, fit
from models.spec import (
    IRIS_NETWORK,
    IRIS_TRAINING,
    ActivationName,
    InitializerName,
    LossName,
    OptimizerName,
)


def dense(units: int, **kw: object) -> dict[str, object]:
    return {"type": "dense", "units": units, **kw}


def classifier(
    n_features: int = 5, *hidden: dict[str, object], classes: int = 3
) -> dict[str, object]:
    layers = [
        dense(8, activation="relu", input_dim=n_features),
        *hidden,
        dense(classes, activation="softmax"),
    ]
    return {"layers": layers}


def weights(result: object) -> list[torch.Tensor]:
    return [t.detach().clone() for t in result.module.state_dict().values()]  # type: ignore[attr-defined]


def test_iris_reaches_095(iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = iris
    result = fit(IRIS_NETWORK, IRIS_TRAINING, x, y, device="cpu")
    assert len(result.history) == 200
    assert result.history[-1].metrics["accuracy"] >= 0.95
    assert result.standardization is not None


@pytest.mark.parametrize("activation", get_args(ActivationName))
def test_every_activation_trains(activation: str, blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    net = {
        "layers": [
            dense(6, activation=activation, input_dim=5),
            {"type": "activation", "activation": activation},
            dense(3, activation="softmax"),
        ]
    }
    before = fit(
        net, {"loss": "sparse_categorical_crossentropy", "epochs": 1, "seed": 1}, x, y, device="cpu"
    )
    after = fit(
        net, {"loss": "sparse_categorical_crossentropy", "epochs": 4, "seed": 1}, x, y, device="cpu"
    )
    assert np.isfinite(after.history[-1].loss)
    assert after.history[-1].loss != before.history[-1].loss


@pytest.mark.parametrize("initializer", get_args(InitializerName))
def test_every_initializer_builds(initializer: str, blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    bias_init = "zeros" if initializer == "orthogonal" else initializer
    net = {
        "layers": [
            dense(
                6,
                activation="tanh",
                input_dim=5,
                kernel_initializer=initializer,
                bias_initializer=bias_init,
            ),
            dense(3, activation="softmax"),
        ]
    }
    result = fit(
        net, {"loss": "categorical_crossentropy", "epochs": 2, "seed": 0}, x, y, device="cpu"
    )
    assert np.isfinite(result.history[-1].loss)


@pytest.mark.parametrize(
    "layer",
    [
        {"type": "dropout", "rate": 0.3},
        {"type": "batch_normalization"},
        {"type": "layer_normalization"},
        {"type": "activation", "activation": "leaky_relu", "alpha": 0.1},
    ],
)
def test_every_layer_trains(layer: dict[str, object], blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    cfg = {
        "loss": "categorical_crossentropy",
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 30,
        "batch_size": 16,
        "seed": 0,
    }
    result = fit(classifier(5, layer), cfg, x, y, device="cpu")
    assert result.history[-1].loss < result.history[0].loss
    assert result.history[-1].metrics["accuracy"] > 0.8


@pytest.mark.parametrize("optimizer", get_args(OptimizerName))
def test_every_optimizer_lowers_the_loss(
    optimizer: str, linear_regression: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = linear_regression
    net = {"layers": [dense(2, input_dim=3)]}
    lr = {"sgd": 0.05, "adagrad": 0.3, "rmsprop": 0.01, "adam": 0.05, "adamw": 0.05}[optimizer]
    cfg = {
        "loss": "mse",
        "optimizer": {"name": optimizer, "learning_rate": lr},
        "epochs": 20,
        "batch_size": 8,
        "seed": 0,
    }
    result = fit(net, cfg, x, y, device="cpu")
    assert result.history[-1].loss < 0.5 * result.history[0].loss


@pytest.mark.parametrize("loss", get_args(LossName))
def test_every_loss_trains(loss: str, blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    if loss == "binary_crossentropy":
        y = (y == 0).astype(np.int64)
        net = {"layers": [dense(8, activation="relu", input_dim=5), dense(1, activation="sigmoid")]}
    elif loss in ("mse", "mae", "huber"):  # regression losses on classes compare with one-hot rows
        net = classifier(5)
    else:
        net = classifier(5)
    cfg = {"loss": loss, "optimizer": "adam", "epochs": 15, "batch_size": 8, "seed": 2}
    result = fit(net, cfg, x, y, device="cpu")
    assert result.history[-1].loss < result.history[0].loss
    assert result.history[-1].metrics["accuracy"] > 0.8


def test_regression_reports_mae_and_val_mae(
    linear_regression: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = linear_regression
    cfg = {"loss": "huber", "optimizer": "adam", "epochs": 3, "validation_split": 0.25, "seed": 0}
    rec = fit({"layers": [dense(2, input_dim=3)]}, cfg, x, y, device="cpu").history[-1].as_dict()
    assert set(rec) == {
        "epoch",
        "loss",
        "mae",
        "val_loss",
        "val_mae",
        "learning_rate",
        "seconds",
        "grad_norm",
        "layer_grad_norms",
    }
    assert rec["layer_grad_norms"].keys() == {"dense"} and rec["grad_norm"] > 0


def test_one_hot_targets_match_class_indices(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    cfg = {"loss": "categorical_crossentropy", "epochs": 3, "seed": 4}
    a = fit(classifier(5), cfg, x, y, device="cpu")
    b = fit(classifier(5), cfg, x, np.eye(3, dtype=np.float32)[y], device="cpu")
    assert [r.loss for r in a.history] == pytest.approx([r.loss for r in b.history], rel=1e-5)
    assert [r.metrics for r in a.history] == [r.metrics for r in b.history]


def test_same_seed_same_metrics_different_seed_differs(
    blobs: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = blobs
    net = classifier(5, {"type": "dropout", "rate": 0.5})
    cfg = {"loss": "categorical_crossentropy", "epochs": 3, "seed": 7, "validation_split": 0.2}

    def strip(r: FitResult) -> list[dict[str, object]]:
        return [{k: v for k, v in h.as_dict().items() if k != "seconds"} for h in r.history]

    a, b = fit(net, cfg, x, y, device="cpu"), fit(net, cfg, x, y, device="cpu")
    assert strip(a) == strip(b)
    c = fit(net, {**cfg, "seed": 8}, x, y, device="cpu")
    assert strip(c) != strip(a)


def test_fit_leaves_the_global_rng_alone(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(
        classifier(5, {"type": "dropout", "rate": 0.5}),
        {"loss": "categorical_crossentropy", "seed": 1},
        x,
        y,
        device="cpu",
    )
    assert torch.equal(torch.rand(3), expected)


def test_validation_split_takes_the_last_rows(
    linear_regression: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = linear_regression
    cfg = {"loss": "mse", "epochs": 1, "validation_split": 0.25, "seed": 0, "optimizer": "sgd"}
    result = fit({"layers": [dense(2, input_dim=3)]}, cfg, x, y, device="cpu")
    with torch.no_grad():
        out = result.module(torch.from_numpy(x))
    last = torch.nn.functional.mse_loss(out[48:], torch.from_numpy(y[48:])).item()
    first = torch.nn.functional.mse_loss(out[:16], torch.from_numpy(y[:16])).item()
    assert result.history[0].val_loss == pytest.approx(last, rel=1e-5)
    assert result.history[0].val_loss != pytest.approx(first, rel=1e-3)


def test_standardize_uses_training_rows_only_and_survives_constant_columns() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(40, 3)).astype(np.float32)
    x[:, 2] = 7.0  # constant column
    x[30:, 0] += 100.0  # the validation rows are shifted
    y = rng.integers(0, 2, size=40)
    cfg = {
        "loss": "binary_crossentropy",
        "epochs": 2,
        "standardize": True,
        "validation_split": 0.25,
        "seed": 0,
    }
    net = {"layers": [dense(1, activation="sigmoid", input_dim=3)]}
    result = fit(net, cfg, x, y, device="cpu")
    s = result.standardization
    assert s is not None
    assert torch.allclose(s.mean, torch.from_numpy(x[:30].mean(axis=0)), atol=1e-5)
    assert s.std[2].item() == 1.0
    assert np.isfinite(result.history[-1].loss) and np.isfinite(result.history[-1].val_loss)


def test_dropout_on_in_training_off_in_eval() -> None:
    from models import build

    net = build(classifier(20, {"type": "dropout", "rate": 0.5}, classes=4), seed=0)
    x = torch.randn(8, 20)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    with torch.inference_mode():
        assert torch.equal(net(x), net(x))


class Recorder(Callback):
    def __init__(self) -> None:
        self.batches = 0
        self.epochs: list[int] = []
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.began = self.ended = False

    def on_train_begin(self, trainer: Trainer) -> None:
        self.began = True

    def on_batch_end(self, trainer: Trainer) -> None:
        self.batches += 1

    def on_epoch_end(self, trainer: Trainer, record: object) -> None:
        self.epochs.append(trainer.epoch)
        self.weights[trainer.epoch] = [t.clone() for t in trainer.module.state_dict().values()]

    def on_train_end(self, trainer: Trainer, result: object) -> None:
        self.ended = True


def test_callbacks_see_every_step_and_epoch(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    rec = Recorder()
    fit(
        classifier(5),
        {"loss": "categorical_crossentropy", "epochs": 3, "batch_size": 16},
        x,
        y,
        device="cpu",
        callbacks=[rec],
    )
    assert rec.began and rec.ended
    assert rec.batches == 3 * 6  # ceil(90 / 16) steps per epoch
    assert rec.epochs == [1, 2, 3]


def test_stop_training_from_a_callback(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs

    class StopAt2(Callback):
        def on_epoch_end(self, trainer: Trainer, record: object) -> None:
            if trainer.epoch == 2:
                raise StopTraining

    result = fit(
        classifier(5),
        {"loss": "categorical_crossentropy", "epochs": 10},
        x,
        y,
        device="cpu",
        callbacks=[StopAt2()],
    )
    assert len(result.history) == 2 and result.stopped_epoch == 2
    assert not result.module.training


def test_early_stopping_restores_best_weights(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    perm = np.random.default_rng(0).permutation(90)
    x, y = x[perm], y[perm]
    y[72:] = (
        y[72:] + 1
    ) % 3  # validation labels contradict training: val_loss rises as training fits
    cfg = {
        "loss": "categorical_crossentropy",
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "epochs": 60,
        "validation_split": 0.2,
        "seed": 0,
        "early_stopping": {"patience": 3, "restore_best_weights": True},
    }
    rec = Recorder()
    result = fit(classifier(5), cfg, x, y, device="cpu", callbacks=[rec])
    val = [h.val_loss for h in result.history]
    best = int(np.argmin(val)) + 1
    assert result.stopped_epoch == len(val) < 60
    assert result.stopped_epoch - best == 3 and result.best_epoch == best
    for got, want in zip(result.module.state_dict().values(), rec.weights[best], strict=True):
        assert torch.equal(got, want)


def test_restore_best_weights_even_when_epochs_run_out(
    blobs: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = blobs
    perm = np.random.default_rng(0).permutation(90)
    x, y = x[perm], y[perm]
    y[72:] = (y[72:] + 1) % 3
    cfg = {
        "loss": "categorical_crossentropy",
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "epochs": 12,
        "validation_split": 0.2,
        "seed": 0,
        "early_stopping": {"patience": 1000, "restore_best_weights": True},
    }
    rec = Recorder()
    result = fit(classifier(5), cfg, x, y, device="cpu", callbacks=[rec])
    best = int(np.argmin([h.val_loss for h in result.history])) + 1
    assert best < 12 and result.stopped_epoch is None
    for got, want in zip(result.module.state_dict().values(), rec.weights[best], strict=True):
        assert torch.equal(got, want)


def test_non_finite_loss_names_the_epoch() -> None:
    x = np.full((16, 2), 1e3, dtype=np.float32)
    y = np.full((16, 1), 1e15, dtype=np.float32)
    cfg = {
        "loss": "mse",
        "optimizer": {"name": "sgd", "learning_rate": 10.0},
        "epochs": 50,
        "batch_size": 4,
    }
    with pytest.raises(TrainingError, match=r"in epoch \d+.*learning rate.*clipnorm") as e:
        fit({"layers": [dense(1, input_dim=2)]}, cfg, x, y, device="cpu")
    assert e.value.epoch is not None and e.value.epoch >= 1


def test_clipvalue_bounds_each_update(linear_regression: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = linear_regression
    net = {"layers": [dense(2, input_dim=3, kernel_initializer="zeros")]}
    cfg = {
        "loss": "mse",
        "optimizer": {"name": "sgd", "learning_rate": 1.0},
        "batch_size": "full",
        "clipvalue": 0.01,
    }
    result = fit(net, cfg, x * 100, y * 100, device="cpu")
    assert result.module.layers.dense.weight.abs().max().item() == pytest.approx(0.01)
    cfg = {**cfg, "clipvalue": None, "clipnorm": 0.5}
    result = fit(net, cfg, x * 100, y * 100, device="cpu")
    assert result.module.layers.dense.weight.norm().item() == pytest.approx(0.5, rel=1e-5)
    assert result.history[0].grad_norm > 0.5  # the recorded norm is the one before clipping


def test_vanishing_gradients_are_visible() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    layers = [dense(16, activation="sigmoid", input_dim=4)] + [
        dense(16, activation="sigmoid") for _ in range(6)
    ]
    net = {"layers": [*layers, dense(1, activation="sigmoid")]}
    rec = fit(
        net, {"loss": "binary_crossentropy", "optimizer": "sgd", "seed": 0}, x, y, device="cpu"
    ).history[0]
    norms = rec.layer_grad_norms
    assert list(norms) == ["dense", *[f"dense_{i}" for i in range(1, 8)]]
    assert norms["dense"] < norms["dense_7"] / 100  # sigmoid stacks shrink gradients layer by layer


def test_bad_inputs_get_clear_errors(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    cfg = {"loss": "categorical_crossentropy"}
    with pytest.raises(SpecError, match="expects 5 inputs, the dataset has 4"):
        fit(classifier(5), cfg, x[:, :4], y, device="cpu")
    with pytest.raises(SpecError, match=r"class labels must be 0\.\.2"):
        fit(classifier(5), cfg, x, y + 1, device="cpu")
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(SpecError, match="row 7"):
        fit(classifier(5), cfg, bad, y, device="cpu")
    with pytest.raises(SpecError, match="unknown device"):
        fit(classifier(5), cfg, x, y, device="tpu")
    with pytest.raises(SpecError, match="90 feature rows"):
        fit(classifier(5), cfg, x, y[:10], device="cpu")


def test_precision_settings_are_fp32_on_cpu(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    cfg = {"loss": "categorical_crossentropy", "epochs": 2, "seed": 3}
    a = fit(classifier(5), cfg, x, y, device="cpu")
    b = fit(classifier(5), {**cfg, "precision": "bf16"}, x, y, device="cpu")
    assert [h.loss for h in a.history] == [h.loss for h in b.history]


def test_full_batch_is_one_step_per_epoch(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    rec = Recorder()
    fit(
        classifier(5),
        {"loss": "categorical_crossentropy", "batch_size": "full", "epochs": 4},
        x,
        y,
        device="cpu",
        callbacks=[rec],
    )
    assert rec.batches == 4


class GradNorms(Callback):
    """Recomputes each step's per-layer gradient norms on the host (slow; for checking only)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_batch_end(self, trainer: Trainer) -> None:
        per_layer: dict[str, float] = {}
        for name, p in trainer.module.named_parameters():
            layer = name.split(".")[1]
            per_layer[layer] = per_layer.get(layer, 0.0) + float(p.grad.double().square().sum())  # type: ignore[union-attr]
        per_layer["(global)"] = sum(per_layer.values())
        self.steps.append({k: v**0.5 for k, v in per_layer.items()})


@pytest.mark.parametrize(("rows", "batch_size"), [(40, "full"), (42, 2)])
def test_gradient_norms_are_the_mean_over_steps(
    rows: int, batch_size: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 21 steps: two full flushes and a rest
    monkeypatch.setattr("models.eager._FLUSH_STEPS", 8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=rows)
    net = {
        "layers": [
            dense(4, activation="tanh", input_dim=3),
            {"type": "layer_normalization"},
            dense(1, activation="sigmoid"),
        ]
    }
    probe = GradNorms()
    cfg = {"loss": "binary_crossentropy", "optimizer": "sgd", "batch_size": batch_size, "seed": 0}
    rec = fit(net, cfg, x, y, device="cpu", callbacks=[probe]).history[0]
    assert len(probe.steps) == (1 if batch_size == "full" else rows // 2)
    for layer in ("dense", "layer_normalization", "dense_1"):
        want = np.mean([s[layer] for s in probe.steps])
        assert rec.layer_grad_norms[layer] == pytest.approx(want, rel=1e-5)
    assert rec.grad_norm == pytest.approx(np.mean([s["(global)"] for s in probe.steps]), rel=1e-5)


def test_large_finite_features_are_accepted_and_nan_is_not() -> None:
    from models.data import features

    x = np.full((4, 2), 3e38, dtype=np.float32)  # finite, though their float32 sum overflows
    assert features(x).shape == (4, 2)
    x[2, 1] = np.inf
    with pytest.raises(SpecError, match="row 2"):
        features(x)
