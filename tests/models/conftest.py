"""Shared data for the models/ tests: the real iris table and small synthetic sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    """The real iris table shipped in app/data (150 rows, 4 features, 3 species), read with numpy
    (class indices in the sorted order of the species names, as fitserve's datasets use)."""
    path = Path(__file__).resolve().parents[2] / "app" / "data" / "iris.csv"
    raw = np.loadtxt(str(path), delimiter=",", skiprows=1, dtype=str)
    _, y = np.unique(raw[:, 4], return_inverse=True)
    return raw[:, :4].astype(np.float32), y.astype(np.int64)


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Three separable Gaussian classes in 5-D, 90 rows."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 3
    y = np.repeat(np.arange(3), 30)
    x = centers[y] + rng.normal(size=(90, 5))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture
def linear_regression() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]]) + 0.1).astype(np.float32)
    return x, y
