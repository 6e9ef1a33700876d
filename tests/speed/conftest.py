"""Shared data for the speed tests: the real iris table (scikit-learn's bundled CSV)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

# the API fixtures (an app per database, its client and a row helper) for the endpoint tests
from tests.api.conftest import anyio_backend, app, client, db, settings  # noqa: F401


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations, "scikit-learn is a test dependency"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "iris.csv"
    raw = np.loadtxt(str(path), delimiter=",", skiprows=1)
    return raw[:, :4].astype(np.float32), raw[:, 4].astype(np.int64)


@pytest.fixture
def graphs(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set FITSERVE_CUDA_GRAPHS for one test: graphs("0") | graphs("emulate") | graphs("1")."""

    def set_mode(mode: str) -> None:
        monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", mode)

    return set_mode
