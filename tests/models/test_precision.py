"""bf16 autocast on the layers and through models.fit, on the CPU.

Under CUDA bf16 autocast F.linear returns bfloat16: a BatchNormalization after a Dense gets a
bf16 batch, whose mean would not fit the float32 moving averages (`lerp_` raises "expected dtype
float for `end` but got BFloat16"). CPU autocast with dtype=bfloat16 produces the same bf16
activations, so the same code is checked here; FITSERVE_TEST_CPU_BF16=1 makes models.fit run
its CPU steps under it (the CPU otherwise trains in fp32), both through the eager loop and
through the CUDA-graph path's step body (FITSERVE_CUDA_GRAPHS=emulate).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import models
from models import layers as L
from models import precision

# Every layer type a spec can name, each after a Dense so it receives that Dense's bf16 output.
EVERY_LAYER = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu", "input_dim": 4},
        {"type": "batch_normalization"},
        {"type": "dense", "units": 16},
        {"type": "activation", "activation": "tanh"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 12, "activation": "gelu"},
        {"type": "layer_normalization"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
TRAINING = {
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "batch_size": 10,
    "epochs": 4,
    "seed": 5,
    "standardize": True,
    "validation_split": 0.2,
    "precision": "bf16",
}


def _bf16_batch(rows: int, features: int) -> torch.Tensor:
    """What a Dense returns under bf16 autocast: a bfloat16 (rows, features) batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, generator=g)
    w = torch.randn(features, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.linear(x, w)
    assert y.dtype == torch.bfloat16
    return y


def test_batch_normalization_keeps_float32_statistics_of_a_bf16_batch() -> None:
    y = _bf16_batch(32, 6)
    bn = L.BatchNormalization(6, momentum=0.9, epsilon=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bn(y)  # raised in lerp_ before the statistics were taken in float32
    assert out.dtype == torch.bfloat16  # the input's dtype, as torch's batch_norm under autocast
    assert bn.moving_mean.dtype == bn.moving_variance.dtype == torch.float32
    # torch's own batch norm on the same values in float32 is the reference: its running mean
    # with momentum 0.1 is Keras' with momentum 0.9; its normalized output uses the biased var
    running_mean, running_var = torch.zeros(6), torch.ones(6)
    reference = F.batch_norm(
        y.float(), running_mean, running_var, training=True, momentum=0.1, eps=1e-3
    )
    torch.testing.assert_close(bn.moving_mean, running_mean)
    n = y.shape[0]  # torch keeps the unbiased variance; Keras the biased one
    biased = 0.9 + (running_var - 0.9) * (n - 1) / n
    torch.testing.assert_close(bn.moving_variance, biased, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.float(), reference, rtol=1e-2, atol=1e-2)  # bf16 rounding
    bn.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bn(y).dtype == torch.bfloat16


def test_layer_normalization_normalizes_a_bf16_batch_in_float32() -> None:
    y = _bf16_batch(8, 5)
    ln = L.LayerNormalization(5, eps=1e-3)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ln(y)
    assert out.dtype == torch.bfloat16
    expected = F.layer_norm(y.float(), (5,), ln.weight, ln.bias, 1e-3)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    assert isinstance(ln, torch.nn.LayerNorm)  # same parameters, same state-dict keys


@pytest.mark.parametrize("graphs", ["off", "emulate"])
def test_every_layer_type_trains_under_cpu_bf16_autocast(
    iris: Any, graphs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(precision.TEST_CPU_BF16_ENV, "1")
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", graphs)
    x, y = iris
    # emulate needs enough full-batch steps to take the graph path: 12 per epoch, 4 epochs
    result = models.fit(EVERY_LAYER, {**TRAINING, "batch_size": 10}, x, y, device="cpu")
    assert result.step_mode == (
        "cuda_graph (emulated)" if graphs == "emulate" else "eager: " + "FITSERVE_CUDA_GRAPHS=0"
    )
    assert result.precision == "bf16"  # observed: the Dense layers produced bfloat16
    losses = [r.loss for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    bn = result.module.layers.batch_normalization
    assert bn.moving_mean.dtype == torch.float32
    assert bn.moving_mean.abs().sum() > 0 and torch.isfinite(bn.moving_variance).all()
    # the same run in fp32 for comparison: bf16 keeps ~3 significant digits, so the first
    # epoch's loss agrees to a few percent (same seed, same batches)
    monkeypatch.delenv(precision.TEST_CPU_BF16_ENV)
    fp32 = models.fit(EVERY_LAYER, {**TRAINING, "batch_size": 10}, x, y, device="cpu")
    assert fp32.precision == "fp32"
    assert math.isclose(result.history[0].loss, fp32.history[0].loss, rel_tol=0.05)


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", ["0", "1"])
def test_every_layer_type_trains_in_bf16_on_cuda(
    iris: Any, graphs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", graphs)
    x, y = iris
    result = models.fit(EVERY_LAYER, TRAINING, x, y, device="cuda")
    assert result.precision == "bf16"
    assert result.step_mode == ("cuda_graph" if graphs == "1" else "eager: FITSERVE_CUDA_GRAPHS=0")
    losses = [r.loss for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert result.module.layers.batch_normalization.moving_mean.dtype == torch.float32
