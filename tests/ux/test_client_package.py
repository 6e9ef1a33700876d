"""The fitserve-client package (clients/python) installed alone into a fresh virtual environment
— no torch, no server code — runs the walk-through against a live server: upload a CSV, train
with progress, predict, from its command line and from Python."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.ux.conftest import IRIS_CSV, IRIS_NETWORK, IRIS_TRAINING, ROOT, LiveServer

CLIENT_DIR = ROOT / "clients" / "python"
EPOCHS = 8


def run(*cmd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Not from the checkout, where `python -c` would find app/ and models/ on sys.path[0] ('').
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=tempfile.gettempdir())  # fmt: skip


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding fitserve-client and what pip resolves for it, nothing else. The wheel
    is built with this environment's setuptools (no isolated build env to set up), then
    installed by this environment's pip into the new one (no pip bootstrap there)."""
    tmp = tmp_path_factory.mktemp("client-venv")
    built = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                "--no-build-isolation", CLIENT_DIR, "-w", tmp / "dist")  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("fitserve_client-*.whl")
    venv = tmp / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    installed = run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
                    "--quiet", wheel)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_client_installs_without_torch_or_the_server(client_venv: Path) -> None:
    python = client_venv / "bin" / "python"
    for module in ("torch", "app", "models", "fastapi", "sqlalchemy"):
        probe = run(python, "-c", f"import {module}")
        assert probe.returncode != 0 and f"No module named '{module}'" in probe.stderr, module
    found = run(python, "-c", "import fitserve_client, sys; print(fitserve_client.__file__)")
    assert found.returncode == 0 and str(client_venv) in found.stdout, found


def test_the_walk_through_from_the_client_venv(
    client_venv: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    cli = client_venv / "bin" / "fitserve-client"
    server = ("--server", live_server.url)
    uploaded = run(cli, "datasets", "upload", IRIS_CSV, "--target", "species", *server)
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = uploaded.stdout.strip()
    assert "150 rows" in uploaded.stderr

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"network": IRIS_NETWORK, "training": IRIS_TRAINING}))
    trained = run(cli, "train", spec, "--dataset", dataset_id, "--epochs", str(EPOCHS), *server)
    assert trained.returncode == 0, trained.stderr
    progress = [line for line in trained.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in progress] == [f"{n}/{EPOCHS}" for n in range(1, EPOCHS + 1)]
    model_id = trained.stdout.strip()

    predicted = run(cli, "predict", model_id, "--csv", IRIS_CSV, *server)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == 150
    truth = [r["species"] for r in csv.DictReader(io.StringIO(IRIS_CSV.read_text()))]
    labels = [r["prediction"] for r in rows]
    assert set(labels) <= {"setosa", "versicolor", "virginica"}
    assert sum(p == t for p, t in zip(labels, truth, strict=True)) > 75  # it learned something

    # The same from Python in that venv: typed results, epochs as they happen.
    script = f"""
from fitserve_client import FitserveClient
with FitserveClient({live_server.url!r}) as fs:
    job = fs.submit({IRIS_NETWORK!r}, {dataset_id!r}, {IRIS_TRAINING!r}, epochs=3)
    seen = []
    job = fs.wait(job.id, on_epoch=lambda m: seen.append(m.epoch))
    print(seen, job.status, fs.predict(job.model_id, [[5.1, 3.5, 1.4, 0.2]]).predictions)
"""
    scripted = run(client_venv / "bin" / "python", "-c", script)
    assert scripted.returncode == 0, scripted.stderr
    assert scripted.stdout.startswith("[1, 2, 3] succeeded ["), scripted.stdout
