"""`fitserve train|jobs|datasets|predict` as a user runs them, against a live server and worker."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.ux.conftest import CLI, IRIS_CSV, IRIS_NETWORK, IRIS_TRAINING, ROOT, LiveServer

HEX_ID = re.compile(r"[0-9a-f]{32}")


def fitserve(
    server: LiveServer, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--server", server.url],
        cwd=ROOT,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_train_shows_progress_and_prints_the_model_id(
    live_server: LiveServer, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"network": IRIS_NETWORK, "training": IRIS_TRAINING}))
    result = fitserve(live_server, "train", str(spec), "--dataset", "iris", "--epochs", "15")
    assert result.returncode == 0, result.stderr
    model_id = result.stdout.strip()
    assert HEX_ID.fullmatch(model_id), result.stdout
    # Not a terminal: one progress line per epoch, each with the measured figures.
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == [f"{n}/15" for n in range(1, 16)]
    assert all("loss" in line and "accuracy" in line and "val_loss" in line for line in lines)
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    assert "succeeded" in result.stderr

    listing = fitserve(live_server, "jobs", "list")
    assert listing.returncode == 0 and model_id in listing.stdout

    shown = json.loads(
        fitserve(live_server, "jobs", "show", _job_of(listing.stdout, model_id)).stdout
    )
    assert shown["status"] == "succeeded" and len(shown["history"]) == 15

    predicted = fitserve(live_server, "predict", model_id, "--csv", str(IRIS_CSV))
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == 150
    truth = [row["species"] for row in csv.DictReader(io.StringIO(IRIS_CSV.read_text()))]
    correct = sum(row["prediction"] == label for row, label in zip(rows, truth, strict=True))
    assert correct / 150 >= 0.85

    # the model under a name: register it, point production at it, predict by name
    name = f"iris-cli-{model_id[:8]}"
    registered = fitserve(live_server, "names", "register", name, model_id)
    assert registered.returncode == 0 and registered.stdout.strip() == "1", registered.stderr
    moved = fitserve(live_server, "names", "alias", name, "production", "1")
    assert moved.returncode == 0 and f"{name}@production -> version 1" in moved.stderr
    shown_name = json.loads(fitserve(live_server, "names", "show", name).stdout)
    assert shown_name["aliases"] == {"production": 1}
    assert shown_name["versions"][0]["model_id"] == model_id
    assert f"{name}\t1 versions\tproduction=1" in fitserve(live_server, "names", "list").stdout
    by_name = fitserve(live_server, "predict", name, "--csv", str(IRIS_CSV))
    assert by_name.returncode == 0 and by_name.stdout == predicted.stdout
    missing = fitserve(live_server, "names", "alias", name, "production", "9")
    assert missing.returncode != 0 and "no version 9" in missing.stderr
    removed = fitserve(live_server, "names", "unalias", name, "production")
    assert removed.returncode == 0 and f"{name}@production removed" in removed.stderr
    assert json.loads(fitserve(live_server, "names", "show", name).stdout)["aliases"] == {}
    again = fitserve(live_server, "names", "unalias", name, "production")
    assert again.returncode != 0 and "no alias 'production'" in again.stderr


def _job_of(listing: str, model_id: str) -> str:
    line = next(line for line in listing.splitlines() if model_id in line)
    return line.split()[0]


def test_train_just_a_network_with_flags(live_server: LiveServer, tmp_path: Path) -> None:
    spec = tmp_path / "network.json"
    spec.write_text(json.dumps(IRIS_NETWORK))
    result = fitserve(
        live_server, "train", str(spec), "--dataset", "iris", "--epochs", "2",
        "--loss", "sparse_categorical_crossentropy", "--batch-size", "full",
        "--register-as", "flags-net",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model_id = result.stdout.strip()
    assert HEX_ID.fullmatch(model_id)
    named = json.loads(fitserve(live_server, "names", "show", "flags-net").stdout)
    assert named["versions"][-1]["model_id"] == model_id


def test_train_errors_exit_non_zero_with_the_message(
    live_server: LiveServer, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    bad: dict[str, Any] = {
        "layers": [{**IRIS_NETWORK["layers"][0], "input_dim": 7}, IRIS_NETWORK["layers"][1]]
    }
    spec.write_text(json.dumps({"network": bad, "training": IRIS_TRAINING}))
    result = fitserve(live_server, "train", str(spec), "--dataset", "iris", "--epochs", "2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error" in result.stderr and "7" in result.stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = fitserve(live_server, "train", str(broken), "--dataset", "iris")
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_datasets_upload_and_list(live_server: LiveServer) -> None:
    result = fitserve(
        live_server,
        "datasets",
        "upload",
        str(IRIS_CSV),
        "--target",
        "species",
        "--name",
        "cli-iris",
    )
    assert result.returncode == 0, result.stderr
    dataset_id = result.stdout.strip()
    assert HEX_ID.fullmatch(dataset_id)
    assert "150 rows" in result.stderr and "3 classes" in result.stderr
    listing = fitserve(live_server, "datasets", "list")
    assert dataset_id in listing.stdout and "cli-iris" in listing.stdout

    missing = fitserve(live_server, "datasets", "upload", str(IRIS_CSV), "--target", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_jobs_cancel_and_unknown_ids(live_server: LiveServer) -> None:
    result = fitserve(live_server, "jobs", "show", "f" * 32)
    assert result.returncode == 1 and "not found" in result.stderr
    result = fitserve(live_server, "jobs", "cancel", "f" * 32)
    assert result.returncode == 1 and "not found" in result.stderr


def test_train_exits_non_zero_when_the_job_is_cancelled(
    live_server: LiveServer, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"network": IRIS_NETWORK, "training": IRIS_TRAINING}))
    name = f"cancel-me-{tmp_path.name}"
    command = [*CLI, "train", str(spec), "--dataset", "iris", "--epochs", "5000", "--name", name]
    process = subprocess.Popen(
        [*command, "--server", live_server.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        job = None
        while job is None and time.monotonic() < deadline:
            jobs = httpx.get(f"{live_server.url}/v1/jobs", timeout=10).json()["items"]
            job = next((j for j in jobs if j["name"] == name), None)
            time.sleep(0.2)
        assert job is not None, "fitserve train never submitted its job"
        httpx.post(f"{live_server.url}/v1/jobs/{job['id']}/cancel", timeout=10)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1
    assert stdout == ""
    assert f"job {job['id']} cancelled" in stderr


def test_train_warns_when_the_validation_rows_hold_one_class(
    live_api: LiveServer, tmp_path: Path
) -> None:
    """The wine file as scikit-learn ships it (sorted by class): validation_split 0.2 takes 36
    rows of class_2 only, which the submit answer says and the CLI prints."""
    header, *rows = (ROOT / "app" / "data" / "wine.csv").read_text().strip().split("\n")
    rows.sort(key=lambda row: row.rsplit(",", 1)[1])
    sorted_csv = tmp_path / "wine-sorted.csv"
    sorted_csv.write_text("\n".join([header, *rows]) + "\n")
    uploaded = fitserve(live_api, "datasets", "upload", str(sorted_csv), "--target", "class")
    assert uploaded.returncode == 0, uploaded.stderr
    network = {"layers": [{"type": "dense", "units": 3, "activation": "softmax", "input_dim": 13}]}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"network": network, "training": IRIS_TRAINING}))
    result = fitserve(
        live_api, "train", str(spec), "--dataset", uploaded.stdout.strip(), "--detach"
    )
    assert result.returncode == 0, result.stderr
    assert "fitserve: warning: the validation rows (the last 36 of 178" in result.stderr
    assert "single class ('class_2')" in result.stderr
    builtin = fitserve(live_api, "train", str(spec), "--dataset", "wine", "--detach")
    assert builtin.returncode == 0 and "warning" not in builtin.stderr, builtin.stderr


def test_tune_follows_the_trials_and_prints_the_best_model(
    live_server: LiveServer, tmp_path: Path
) -> None:
    spec = tmp_path / "search.json"
    spec.write_text(
        json.dumps(
            {
                "network": IRIS_NETWORK,
                "training": {**IRIS_TRAINING, "epochs": 4},
                "search_space": {
                    "network.layers[0].units": {"int": [2, 16]},
                    "training.optimizer.learning_rate": {"float": [1e-3, 0.1], "log": True},
                },
                "objective": {"metric": "val_accuracy"},
                "seed": 5,
            }
        )
    )
    result = fitserve(
        live_server, "tune", str(spec), "--dataset", "iris", "--trials", "3", "--parallel", "1"
    )
    assert result.returncode == 0, result.stderr
    model_id = result.stdout.strip()
    assert HEX_ID.fullmatch(model_id), result.stdout
    # Not a terminal: one line per trial as it ends, with its value and params.
    lines = [line for line in result.stderr.splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["0", "1", "2"]
    assert all("complete" in line and "units=" in line for line in lines)
    assert "completed: best trial" in result.stderr
    listed = httpx.get(f"{live_server.url}/v1/studies").json()["items"]
    study = next(s for s in listed if s["name"] == "search")
    assert study["best_trial"]["model_id"] == model_id
    # the best model is the next version of the model name "search"
    version = study["registered_version"]
    assert study["register_as"] == "search" and version >= 1
    assert f"registered as search@{version}" in result.stderr
    named = httpx.get(f"{live_server.url}/v1/registered-models/search").json()
    assert {"version": version, "model_id": model_id} in [
        {"version": v["version"], "model_id": v["model_id"]} for v in named["versions"]
    ]
