"""device="auto" placement (models/placement.py) and the precision recorded on a fit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import models
from models import placement
from models.spec import NetworkSpec, TrainingConfig

IRIS_NET = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
IRIS_TRAINING = {"loss": "sparse_categorical_crossentropy", "optimizer": "adam", "batch_size": 10,
                 "epochs": 200, "seed": 0}  # fmt: skip
BIG_NET = {
    "layers": [
        {"type": "dense", "units": 4096, "activation": "relu", "input_dim": 1024},
        {"type": "dense", "units": 4096, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
}


def test_auto_without_cuda_trains_on_the_cpu_and_says_why(iris: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    x, y = iris
    result = models.fit(IRIS_NET, {**IRIS_TRAINING, "epochs": 2}, x, y, device="auto")
    assert result.device == "cpu"
    assert result.device_reason == "auto: CUDA is not available"


def test_an_explicit_device_is_kept(iris: Any) -> None:
    x, y = iris
    result = models.fit(IRIS_NET, {**IRIS_TRAINING, "epochs": 1}, x, y, device="cpu")
    assert (result.device, result.device_reason) == ("cpu", "cpu, as asked")


def test_the_rule_picks_the_cpu_only_when_it_finishes_before_a_gpu_starts() -> None:
    bound = placement.GPU_STARTUP_SECONDS
    assert placement.decide(cpu_step_seconds=100e-6, steps=int(bound / 100e-6) - 1)
    assert not placement.decide(cpu_step_seconds=100e-6, steps=int(bound / 100e-6) + 1)
    assert placement.run_steps(150, 10, 200) == 3000 and placement.run_steps(151, 10, 1) == 16


def test_a_small_network_is_probed_on_the_cpu_and_placed_there() -> None:
    # the decision itself, as a CUDA machine makes it (no CUDA call is made to decide)
    choice = placement.choose(
        NetworkSpec.model_validate(IRIS_NET),
        TrainingConfig.model_validate({**IRIS_TRAINING, "epochs": 20}),
        n_features=4,
        n_train=150,
        batch_size=10,
        epochs=20,
        n_params=139,
        cuda_available=True,
    )
    per_step = placement.probe_cpu_step(
        NetworkSpec.model_validate(IRIS_NET),
        TrainingConfig.model_validate(IRIS_TRAINING),
        n_features=4,
        batch_size=10,
        threads=1,
    )
    assert 0 < per_step < 1
    # the measured step time decides (how fast this shared machine is right now is not tested)
    assert choice.steps == 300 and choice.cpu_step_seconds is not None
    on_cpu = placement.decide(cpu_step_seconds=choice.cpu_step_seconds, steps=300)
    assert choice.device.type == ("cpu" if on_cpu else "cuda")
    assert choice.reason.startswith(f"auto: {choice.device.type}, 300 steps x")
    assert "measured on the CPU" in choice.reason


def test_a_large_network_goes_to_the_gpu_without_a_probe() -> None:
    n_params = models.count_params(BIG_NET)
    choice = placement.choose(
        NetworkSpec.model_validate(BIG_NET),
        TrainingConfig.model_validate({**IRIS_TRAINING, "batch_size": 4096}),
        n_features=1024,
        n_train=10 * 4096,
        batch_size=4096,
        epochs=1,
        n_params=n_params,
        cuda_available=True,
    )
    assert choice.device.type == "cuda" and "is GPU work" in choice.reason


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_the_cpu_trains_in_fp32_whatever_is_asked(iris: Any, precision: str) -> None:
    x, y = iris
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    result = models.fit(
        IRIS_NET, {**IRIS_TRAINING, "epochs": 1, "precision": precision}, x, y, device="cpu"
    )
    assert result.precision == "fp32"
    assert result.training.precision == precision  # the config keeps what was asked
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_trains_in_the_precision_asked_and_restores_tf32(iris: Any, precision: str) -> None:
    x, y = iris
    before = torch.backends.cuda.matmul.allow_tf32
    result = models.fit(
        IRIS_NET, {**IRIS_TRAINING, "epochs": 3, "precision": precision}, x, y, device="cuda"
    )
    assert result.precision == precision and result.device.startswith("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_the_probe_leaves_the_callers_random_stream_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    placement.probe_cpu_step(
        NetworkSpec.model_validate(
            {
                "layers": [
                    *IRIS_NET["layers"][:1],
                    {"type": "dropout", "rate": 0.5},
                    *IRIS_NET["layers"][1:],
                ]
            }  # fmt: skip
        ),
        TrainingConfig.model_validate(IRIS_TRAINING),
        n_features=4,
        batch_size=10,
        threads=1,
    )
    assert torch.equal(torch.rand(3), expected)
