"""Checkpoints resume exactly; weights round-trip as safetensors bytes; Predictor serves them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import (
    Callback,
    Checkpoint,
    Predictor,
    SpecError,
    StopTraining,
    Trainer,
    WeightsError,
    fit,
    load_model,
    save_model,
)
from models.spec import IRIS_NETWORK

NET = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu", "input_dim": 5},
        {"type": "batch_normalization"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
CFG = {
    "loss": "categorical_crossentropy",
    "optimizer": "adam",
    "epochs": 6,
    "batch_size": 8,
    "validation_split": 0.2,
    "standardize": True,
    "seed": 11,
    "early_stopping": {"patience": 100, "restore_best_weights": True},
}


class CrashAfter(Callback):
    """Saves a checkpoint after `epoch` and stops: what a worker that dies there leaves behind."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.saved: bytes | None = None

    def on_epoch_end(self, trainer: Trainer, record: object) -> None:
        if trainer.epoch == self.epoch:
            self.saved = trainer.checkpoint().to_bytes()
            raise StopTraining


def _no_seconds(history: list) -> list[dict[str, object]]:  # type: ignore[type-arg]
    return [{k: v for k, v in h.as_dict().items() if k != "seconds"} for h in history]


@pytest.mark.parametrize(
    "optimizer",
    [
        "adam",
        {"name": "adam", "amsgrad": True, "weight_decay": 0.01},
        "adamw",
        {"name": "sgd", "momentum": 0.9},
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        "rmsprop",
        {"name": "rmsprop", "centered": True, "momentum": 0.5},
        "adagrad",
    ],
    ids=str,
)
def test_resume_equals_uninterrupted(
    optimizer: str | dict[str, object], blobs: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = blobs
    cfg = {**CFG, "optimizer": optimizer}
    full = fit(NET, cfg, x, y, device="cpu")
    crash = CrashAfter(3)
    partial = fit(NET, cfg, x, y, device="cpu", callbacks=[crash])
    assert len(partial.history) == 3 and crash.saved is not None
    # something else in the process uses the global RNG between crash and resume
    torch.manual_seed(999)
    torch.rand(100)
    resumed = fit(NET, cfg, x, y, device="cpu", resume=Checkpoint.from_bytes(crash.saved))
    assert _no_seconds(resumed.history) == _no_seconds(full.history)
    for a, b in zip(
        resumed.module.state_dict().values(), full.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_resume_after_early_stop_does_not_train_more(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    y = y.copy()
    y[72:] = (y[72:] + 1) % 3  # validation contradicts training: early stopping fires
    cfg = {
        **CFG,
        "epochs": 60,
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "early_stopping": {"patience": 2, "restore_best_weights": True},
    }

    class Keep(Callback):
        last: bytes = b""

        def on_epoch_end(self, trainer: Trainer, record: object) -> None:
            self.last = trainer.checkpoint().to_bytes()

    keep = Keep()
    full = fit(NET, cfg, x, y, device="cpu", callbacks=[keep])
    assert full.stopped_epoch is not None and full.stopped_epoch < 60
    resumed = fit(NET, cfg, x, y, device="cpu", resume=Checkpoint.from_bytes(keep.last))
    assert len(resumed.history) == len(full.history)
    for a, b in zip(
        resumed.module.state_dict().values(), full.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_checkpoint_refuses_other_spec_or_data(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    crash = CrashAfter(1)
    fit(NET, CFG, x, y, device="cpu", callbacks=[crash])
    assert crash.saved is not None
    ckpt = Checkpoint.from_bytes(crash.saved)
    with pytest.raises(SpecError, match="different training config"):
        fit(NET, {**CFG, "batch_size": 4}, x, y, device="cpu", resume=ckpt)
    with pytest.raises(SpecError, match="data of shape"):
        fit(NET, CFG, x[:50], y[:50], device="cpu", resume=ckpt)
    other = {
        "layers": [
            *NET["layers"][:-1],
            {"type": "dense", "units": 3, "activation": "softmax", "name": "out"},
        ]
    }
    with pytest.raises(SpecError, match="different network"):
        fit(other, CFG, x, y, device="cpu", resume=ckpt)


def test_checkpoint_carries_its_spec_and_no_pickle(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    crash = CrashAfter(2)
    cfg = {**CFG, "early_stopping": None}  # so the returned module holds epoch 2's weights
    partial = fit(NET, cfg, x, y, device="cpu", callbacks=[crash])
    assert crash.saved is not None
    header_len = int.from_bytes(crash.saved[:8], "little")
    header = json.loads(crash.saved[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["fitserve"])
    assert meta["format"] == "fitserve.checkpoint/1" and meta["epoch"] == 2
    # no generator state: it would tie the checkpoint to the device type that wrote it
    assert not [k for k in header if k.startswith("rng/")]
    assert b"\x80\x04" not in crash.saved[:16]  # no pickle protocol header
    module = Checkpoint.from_bytes(crash.saved).build_module()
    for a, b in zip(
        module.state_dict().values(), partial.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_save_load_round_trip_predicts_the_same(iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = iris
    cfg = {
        "loss": "categorical_crossentropy",
        "optimizer": "adam",
        "epochs": 5,
        "standardize": True,
        "seed": 0,
    }
    result = fit(IRIS_NETWORK, cfg, x, y, device="cpu")
    blob = save_model(
        result, IRIS_NETWORK, extra={"classes": ["setosa", "versicolor", "virginica"]}
    )
    loaded = load_model(blob)
    assert not loaded.module.training and loaded.extra["classes"][0] == "setosa"
    predictor = Predictor(blob)
    got = predictor.predict(x)
    with torch.inference_mode():
        want = result.module(result.standardization.apply(torch.from_numpy(x))).numpy()  # type: ignore[union-attr]
    np.testing.assert_array_equal(got, want)
    assert got.shape == (150, 3) and np.allclose(got.sum(1), 1.0, atol=1e-6)
    assert predictor.predict(np.zeros((0, 4), dtype=np.float32)).shape == (0, 3)


def test_predictor_rejects_wrong_width_and_bad_values(iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = iris
    result = fit(IRIS_NETWORK, {"loss": "categorical_crossentropy", "seed": 0}, x, y, device="cpu")
    predictor = Predictor(save_model(result, IRIS_NETWORK))
    with pytest.raises(SpecError, match="expects 4 features per row, got 3"):
        predictor.predict(x[:, :3])
    with pytest.raises(SpecError, match="NaN"):
        predictor.predict(np.array([[1.0, np.nan, 0.0, 0.0]]))
    with pytest.raises(SpecError, match="numbers"):
        predictor.predict(np.array([["a", "b", "c", "d"]]))


def test_small_prediction_converts_and_runs_on_one_thread(
    iris: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prediction with little work (10,000 iris rows) runs on one torch thread from its input's
    conversion on: features()' finiteness sum over 40,000 values is parallel on more, and cost
    ~5 ms of CPU on two shared cores where one thread takes 0.1 ms. A larger one keeps every
    thread; the caller's thread count is restored either way."""
    import models.data

    x, y = iris
    result = fit(IRIS_NETWORK, {"loss": "categorical_crossentropy", "seed": 0}, x, y, device="cpu")
    predictor = Predictor(save_model(result, IRIS_NETWORK))
    convert = models.data.features
    seen: list[int] = []

    def features(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return convert(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(models.data, "features", features)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = np.resize(x, (10_000, 4))
        large = np.resize(x, (100_000, 4))  # 2 x 139 parameters x rows over 2^23
        np.testing.assert_array_equal(predictor.predict(small)[:150], predictor.predict(x))
        assert torch.get_num_threads() == 2
        predictor.predict(large)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 1, 2]


def test_load_model_rejects_corrupt_or_mismatched_bytes(
    iris: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = iris
    result = fit(IRIS_NETWORK, {"loss": "categorical_crossentropy", "seed": 0}, x, y, device="cpu")
    blob = save_model(result, IRIS_NETWORK)
    with pytest.raises(WeightsError):
        load_model(b"not weights")
    with pytest.raises(WeightsError):
        load_model(blob[:-10])
    with pytest.raises(
        WeightsError, match="expected fitserve.checkpoint/1 bytes, got format 'fitserve.model/1'"
    ):
        Checkpoint.from_bytes(blob)
    wider = {"layers": [{**IRIS_NETWORK["layers"][0], "units": 9}, *IRIS_NETWORK["layers"][1:]]}
    with pytest.raises(WeightsError, match="weight layers.dense.weight"):
        load_model(_respec(blob, wider))


def _respec(blob: bytes, network: dict[str, object]) -> bytes:
    """The same tensors with another spec in the metadata (a tampered or mixed-up file)."""
    from models.weights import pack, unpack

    tensors, meta = unpack(blob, "fitserve.model/1")
    meta["network"] = network
    return pack(tensors, meta)
