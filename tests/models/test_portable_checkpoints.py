"""Checkpoints resume on any device: nothing in one depends on the device type that wrote it.

A job on device "auto", or in a pool of CPU and GPU workers, may be resumed on the other kind of
device. Generator states are device-specific (a CUDA generator's is 16 bytes, the CPU's 5,056),
so a checkpoint keeps none: each epoch's permutation and dropout seed are derived from
(seed, epoch) (models/randomness.py). On the CPU, a run resumed through the path a CUDA run takes
(the CUDA-graph epochs, emulated) is checked bit for bit against the uninterrupted run; the
tests marked `cuda` resume across device types for real (make test-gpu).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import models
from models import Callback, Checkpoint, StopTraining, Trainer, randomness
from models.weights import CHECKPOINT_FORMAT, pack, unpack

NET = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu", "input_dim": 4},
        {"type": "batch_normalization"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
# 120 training rows, batch 16: 7 full batches an epoch, enough for the graph path after epoch 3
TRAINING = {
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "epochs": 9,
    "batch_size": 16,
    "validation_split": 0.2,
    "standardize": True,
    "seed": 7,
}


class CrashAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.saved = epoch, b""

    def on_epoch_end(self, trainer: Trainer, record: object) -> None:
        if trainer.epoch == self.epoch:
            self.saved = trainer.checkpoint().to_bytes()
            raise StopTraining


def _same(a: models.FitResult, b: models.FitResult) -> None:
    """Bit for bit but the gradient norms, which the graph path sums in another order."""
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        da, db = ra.as_dict(), rb.as_dict()
        for key in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert da[key] == db[key], (ra.epoch, key)
        assert da["grad_norm"] == pytest.approx(db["grad_norm"], rel=1e-6)
    for (name, pa), (_, pb) in zip(
        a.module.state_dict().items(), b.module.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name


def test_a_checkpoint_holds_no_generator_state(iris: Any) -> None:
    x, y = iris
    crash = CrashAfter(2)
    models.fit(NET, TRAINING, x, y, device="cpu", callbacks=[crash])
    tensors, _ = unpack(crash.saved, CHECKPOINT_FORMAT)
    assert tensors and not [k for k in tensors if k.startswith("rng/")]
    assert all(t.device.type == "cpu" for t in tensors.values())


def test_the_epoch_order_is_drawn_on_the_cpu_from_seed_and_epoch() -> None:
    a = randomness.epoch_permutation(5, 3, 100, torch.device("cpu"))
    assert torch.equal(a, randomness.epoch_permutation(5, 3, 100, torch.device("cpu")))
    assert not torch.equal(a, randomness.epoch_permutation(5, 4, 100, torch.device("cpu")))
    assert not torch.equal(a, randomness.epoch_permutation(6, 3, 100, torch.device("cpu")))
    assert sorted(a.tolist()) == list(range(100))


@pytest.mark.parametrize("written_by", ["eager", "emulate"])
def test_a_cpu_checkpoint_resumes_through_the_graph_path_as_if_never_interrupted(
    iris: Any, written_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = iris
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", "0")
    full = models.fit(NET, TRAINING, x, y, device="cpu")
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", "0" if written_by == "eager" else "emulate")
    crash = CrashAfter(3)
    models.fit(NET, TRAINING, x, y, device="cpu", callbacks=[crash])
    torch.manual_seed(999)  # something else in the process draws between crash and resume
    torch.rand(10)
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", "emulate")  # the path a CUDA resume takes
    resumed = models.fit(
        NET, TRAINING, x, y, device="cpu", resume=Checkpoint.from_bytes(crash.saved)
    )
    assert resumed.step_mode == "cuda_graph (emulated)"
    _same(resumed, full)


def test_a_checkpoint_with_a_cuda_generator_state_resumes_on_the_cpu(iris: Any) -> None:
    """Checkpoints written before generator states were dropped carry `rng/` tensors; a CUDA
    worker's shuffle state (16 bytes) crashed every CPU resume in Generator.set_state."""
    x, y = iris
    full = models.fit(NET, TRAINING, x, y, device="cpu")
    crash = CrashAfter(3)
    models.fit(NET, TRAINING, x, y, device="cpu", callbacks=[crash])
    tensors, meta = unpack(crash.saved, CHECKPOINT_FORMAT)
    tensors["rng/shuffle"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA Philox seed + offset
    tensors["rng/cuda"] = torch.zeros(16, dtype=torch.uint8)
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    with pytest.raises(RuntimeError):  # what restoring it into a CPU generator did
        torch.Generator().set_state(tensors["rng/shuffle"])
    old = Checkpoint.from_bytes(pack(tensors, meta))
    _same(models.fit(NET, TRAINING, x, y, device="cpu", resume=old), full)


@pytest.mark.cuda
@pytest.mark.parametrize(("first", "then"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_resumes_on_the_other_device_type(iris: Any, first: str, then: str) -> None:
    x, y = iris
    crash = CrashAfter(3)
    models.fit(NET, TRAINING, x, y, device=first, callbacks=[crash])
    resumed = models.fit(
        NET, TRAINING, x, y, device=then, resume=Checkpoint.from_bytes(crash.saved)
    )
    assert resumed.device.startswith(then) and len(resumed.history) == TRAINING["epochs"]
    assert all(r.loss == r.loss for r in resumed.history)  # finite: no NaN
    # the permutation of an epoch is the same on both devices
    cpu = randomness.epoch_permutation(7, 4, 120, torch.device("cpu"))
    assert torch.equal(cpu, randomness.epoch_permutation(7, 4, 120, torch.device("cuda")).cpu())
