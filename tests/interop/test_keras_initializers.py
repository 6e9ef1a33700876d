"""Every initializer fitserve offers draws what Keras 3's draws: same bounds, mean, spread and
distribution (two-sample Kolmogorov-Smirnov at fixed seeds), for kernels and biases.

The random streams differ (Keras seeds its own generator), so the samples can't be equal; the
distributions must be. Keras' samples come from Keras itself, not from a formula written here.
"""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest

import models
from models.spec import InitializerName
from tests.interop.keras_parity import keras

INITIALIZERS = get_args(InitializerName)
# Kernel (inputs, units) with fan_in != fan_out, so fan_in / fan_out / fan_avg modes all differ.
KERNEL = (120, 80)
BIAS = 6000  # a bias of this many units (its fans are its length, in Keras)
# Kolmogorov's c(alpha) for alpha = 0.001: reject "same distribution" above c * sqrt((n+m)/(nm)).
KS_C = 1.949


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between empirical CDFs."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def keras_sample(name: str, shape: tuple[int, ...]) -> np.ndarray:
    config = {} if name in ("zeros", "ones") else {"seed": 7}
    init = keras.initializers.get({"class_name": name, "config": config})
    return np.asarray(init(shape, dtype="float32").detach().cpu())


def fitserve_sample(name: str, *, bias: bool) -> np.ndarray:
    inputs, units = (5, BIAS) if bias else KERNEL
    dense = {"type": "dense", "units": units, "input_dim": inputs}
    dense["bias_initializer" if bias else "kernel_initializer"] = name
    layer = models.build({"layers": [dense]}, seed=11).layers[0]
    return (layer.bias if bias else layer.weight.T).detach().numpy()


def _same_distribution(ours: np.ndarray, theirs: np.ndarray) -> None:
    n = ours.size
    if np.all(theirs == theirs.flat[0]):  # zeros, ones
        assert np.array_equal(ours, theirs)
        return
    assert abs(ours.mean() - theirs.mean()) < 5 * theirs.std() * math.sqrt(2 / n)
    assert ours.std() == pytest.approx(theirs.std(), rel=0.05)
    # support: the uniform and truncated families stop at the same bound (|w| <= limit)
    bound_ours, bound_theirs = np.abs(ours).max(), np.abs(theirs).max()
    assert bound_ours == pytest.approx(bound_theirs, rel=0.15)
    ks = ks_statistic(ours, theirs)
    assert ks < KS_C * math.sqrt(2 / n), f"KS statistic {ks:.4f}"


@pytest.mark.parametrize("name", INITIALIZERS)
def test_kernel_initializer_draws_as_keras(name: str) -> None:
    ours, theirs = fitserve_sample(name, bias=False), keras_sample(name, KERNEL)
    assert ours.shape == theirs.shape == KERNEL
    _same_distribution(ours, theirs)
    if name == "orthogonal":  # Keras: orthonormal columns (inputs >= units)
        for w in (ours, theirs):
            np.testing.assert_allclose(w.T @ w, np.eye(KERNEL[1]), atol=2e-5)


@pytest.mark.parametrize("name", [n for n in INITIALIZERS if n != "orthogonal"])
def test_bias_initializer_draws_as_keras(name: str) -> None:
    # Keras computes a 1-D weight's fans as (length, length), not from the layer's inputs
    ours, theirs = fitserve_sample(name, bias=True), keras_sample(name, (BIAS,))
    _same_distribution(ours, theirs)


def test_the_ks_statistic_tells_distributions_apart() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, 5000), rng.uniform(-1, 1, 5000)
    assert ks_statistic(a, b) < KS_C * math.sqrt(2 / 5000)
    assert ks_statistic(a, rng.uniform(-1.1, 1.1, 5000)) > KS_C * math.sqrt(2 / 5000)
    assert ks_statistic(a, a) == 0.0
