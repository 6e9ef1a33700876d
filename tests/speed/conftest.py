"""Shared fixtures for the speed tests: the real iris table, the API app, CUDA-graph modes."""

from __future__ import annotations

import pytest

# the API fixtures (an app per database, its client and a row helper) for the endpoint tests
from tests.api.conftest import anyio_backend, app, client, db, settings  # noqa: F401

# the real iris table (scikit-learn's bundled CSV), as the models/ tests read it
from tests.models.conftest import iris  # noqa: F401


@pytest.fixture
def graphs(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set FITSERVE_CUDA_GRAPHS for one test: graphs("0") | graphs("emulate") | graphs("1")."""

    def set_mode(mode: str) -> None:
        monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", mode)

    return set_mode
