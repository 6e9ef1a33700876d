"""`fitserve serve --api-processes 2` as a deployment runs it (keys required, no worker): two
uvicorn processes on one port (a SO_REUSEPORT socket each), sharing a SQLite file and again a
fresh Postgres database.

Which process answered a request is read from /proc: the server's end of the client's TCP
connection is an open socket of exactly one of them. So the server needs no header or other
sign of which process it is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

import models
from app.auth import create_key, revoke_key
from app.cli import build_parser
from app.config import Settings
from app.csv_ingest import parse_csv
from app.data import BUILTINS
from app.db import make_engine, make_sessionmaker, upgrade_head
from app.tables import Dataset, Job, Model
from tests.e2e.conftest import CLI, ROOT, _wait_healthy, free_port

pytestmark = pytest.mark.slow

NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
ROW = [5.1, 3.5, 1.4, 0.2]
# Revocation reaches every process within this (each trusts a verified key for 0.5 s).
REVOKED_WITHIN_SECONDS = 1.0


@cache
def trained(seed: int) -> bytes:
    builtin = BUILTINS["iris"]
    data = parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)
    training = {"loss": "sparse_categorical_crossentropy", "optimizer": "adam", "epochs": 5,
                "batch_size": 16, "seed": seed, "standardize": True}  # fmt: skip
    result = models.fit(NETWORK, training, data.x, data.y, device="cpu")
    return models.save_model(result, NETWORK)


@dataclass
class Cluster:
    port: int
    database_url: str  # SQLAlchemy's spelling
    log: Path
    serve: subprocess.Popen[bytes]
    api_pids: list[int]
    metrics_dir: Path
    secrets: dict[str, str]  # key name -> secret
    key_ids: dict[str, str]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def store_model(self, owner: str, seed: int) -> str:
        """A model row as the worker leaves one, owned by the key named `owner`."""
        engine = make_engine(self.database_url)
        try:
            with make_sessionmaker(engine).begin() as session:
                iris = session.scalar(
                    select(Dataset).where(Dataset.name == "iris", Dataset.builtin)
                )
                assert iris is not None
                owner_id = self.key_ids[owner]
                job = Job(owner_id=owner_id, dataset_id=iris.id, network=NETWORK, training={},
                          status="succeeded", epochs=5, epoch=5,
                          finished_at=datetime.now(UTC))  # fmt: skip
                session.add(job)
                session.flush()
                model = Model(owner_id=owner_id, job_id=job.id, dataset_id=iris.id,
                              network=NETWORK, training={}, task="classification",
                              classes=iris.classes, metrics={}, weights=trained(seed))  # fmt: skip
                session.add(model)
                session.flush()
                job.model_id = model.id
                return str(model.id)
        finally:
            engine.dispose()


@dataclass
class Answer:
    status: int
    body: bytes
    pid: int  # the API process that answered

    def json(self) -> Any:
        return json.loads(self.body)


def answered_by(pids: list[int], port: int, client_port: int) -> int:
    """The process holding the server's end of the connection from `client_port` to `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and (
                int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inodes.add(f"socket:[{inode}]")
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue  # closed since listed
    raise AssertionError(f"no API process holds the connection from port {client_port}")


def call(cluster: Cluster, method: str, path: str, *, key: str, body: Any = None) -> Answer:
    """One request on a connection of its own (so the kernel picks a process afresh)."""
    headers = {"Authorization": f"Bearer {cluster.secrets[key]}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{cluster.port}", timeout=30) as client:
        response = client.request(method, path, json=body, headers=headers)
        client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        # Asked while the client still holds the connection: the server's end is in its fds.
        pid = answered_by(cluster.api_pids, cluster.port, client_port)
        return Answer(response.status_code, response.content, pid)


def on_every_process(cluster: Cluster, send: Any, most: int = 400) -> list[Answer]:
    """`send()` repeated until each API process has answered at least once."""
    answers: list[Answer] = []
    while {a.pid for a in answers} != set(cluster.api_pids):
        assert len(answers) < most, f"{most} connections all went to {answers[0].pid}"
        answers.append(send())
    return answers


@pytest.fixture(scope="module")
def cluster(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    database_url = Settings(database_url=database).database_url
    upgrade_head(database_url)  # only to make the keys first: serve's own upgrade is then a no-op
    engine = make_engine(database_url)
    secrets, key_ids = {}, {}
    with make_sessionmaker(engine).begin() as session:
        for name in ("alice", "bob"):
            key, secrets[name] = create_key(session, name=name)
            session.flush()
            key_ids[name] = str(key.id)
    engine.dispose()

    port = free_port()
    log = tmp_path_factory.mktemp("api-processes") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    env["FITSERVE_REQUIRE_API_KEYS"] = "true"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(log.parent)  # a user's: serve must not use it
    argv = [*CLI, "serve", "--api-processes", "2", "--workers", "0", "--port", str(port),
            "--database-url", database]  # fmt: skip
    with log.open("wb") as out:
        serve = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180  # two processes import torch at once
        _wait_healthy(f"http://127.0.0.1:{port}", serve, log)
        text = log.read_text()
        pids = [int(p) for p in re.findall(r"started api \d \(pid (\d+)\)", text)]
        metrics_dir = re.search(r"metrics are gathered in (\S+)", text)
        assert len(pids) == 2 and metrics_dir is not None, text
        cluster = Cluster(port, database_url, log, serve, pids, Path(metrics_dir[1]), secrets,
                          key_ids)  # fmt: skip
        # Both up: the first to start answered /health, the other may still be importing torch.
        while {call(cluster, "GET", "/v1/models", key="bob").pid for _ in range(20)} != set(pids):
            assert serve.poll() is None, f"serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"one API process never answered:\n{text}"
            time.sleep(0.5)
        yield cluster
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()


def scrape(cluster: Cluster) -> Answer:
    answer = call(cluster, "GET", "/metrics", key="bob")
    assert answer.status == 200, answer.body
    return answer


def count(answer: Answer, family: str, suffix: str) -> float:
    for parsed in text_string_to_metric_families(answer.body.decode()):
        for sample in parsed.samples:
            if parsed.name == family and sample.name == family + suffix:
                return float(sample.value)
    raise AssertionError(f"no {family}{suffix} in\n{answer.body.decode()}")


def test_predictions_on_both_processes_are_counted_once_on_either_one(cluster: Cluster) -> None:
    model_id = cluster.store_model("bob", seed=0)
    before = {a.pid: count(a, "fitserve_prediction_seconds", "_count")
              for a in on_every_process(cluster, lambda: scrape(cluster))}  # fmt: skip
    assert len(set(before.values())) == 1, before  # both report the same total

    def predict() -> Answer:
        answer = call(cluster, "POST", f"/v1/models/{model_id}/predict", key="bob",
                      body={"inputs": [ROW]})  # fmt: skip
        assert answer.status == 200, answer.body
        return answer

    sent = on_every_process(cluster, predict)
    sent += [predict() for _ in range(10)]
    served = {pid: sum(a.pid == pid for a in sent) for pid in cluster.api_pids}
    assert all(served.values()), served
    for scraped in on_every_process(cluster, lambda: scrape(cluster)):
        # the histogram summed over both processes: every prediction once, whichever answers
        total = count(scraped, "fitserve_prediction_seconds", "_count")
        assert total == before[scraped.pid] + len(sent), (scraped.pid, served)
        text = scraped.body.decode()
        # the buckets summed too: the last one holds every observation
        assert f'fitserve_prediction_seconds_bucket{{le="+Inf"}} {total}' in text, text
        # the database's figures once (the answering process), not once per process
        assert text.count('\nfitserve_jobs{status="succeeded"}') == 1, text
        assert text.count("\nfitserve_queue_depth ") == 1, text
        assert count(scraped, "fitserve_event_streams_open", "") == 0
        assert "pid=" not in text  # summed, not one series per process


def test_a_revoked_key_is_refused_by_both_processes_within_a_second(cluster: Cluster) -> None:
    model_id = cluster.store_model("alice", seed=0)
    path = f"/v1/models/{model_id}/predict"

    def predict(key: str) -> Answer:
        return call(cluster, "POST", path, key=key, body={"inputs": [ROW]})

    # Both processes have just verified alice's key: each trusts it for the next 0.5 s.
    assert {a.status for a in on_every_process(cluster, lambda: predict("alice"))} == {200}
    engine = make_engine(cluster.database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            assert revoke_key(session, name="alice") is not None
    finally:
        engine.dispose()
    revoked = time.monotonic()
    late: list[Answer] = []  # sent a second or more after the revocation
    while time.monotonic() - revoked < REVOKED_WITHIN_SECONDS + 0.5 or (
        {a.pid for a in late} != set(cluster.api_pids)
    ):
        assert len(late) < 400, "the requests all went to one process"
        sent = time.monotonic()
        answer = predict("alice")
        if sent - revoked >= REVOKED_WITHIN_SECONDS:
            late.append(answer)
    assert {a.status for a in late} == {401}, [(a.pid, a.status) for a in late]
    assert json.loads(late[-1].body)["code"] == "unauthorized", late[-1].body
    # and the other key is not affected, on either process
    model_of_bob = cluster.store_model("bob", seed=0)
    bob = on_every_process(
        cluster,
        lambda: call(
            cluster, "POST", f"/v1/models/{model_of_bob}/predict", key="bob", body={"inputs": [ROW]}
        ),  # fmt: skip
    )
    assert {a.status for a in bob} == {200}


def test_an_alias_move_is_seen_by_both_processes_on_the_next_request(cluster: Cluster) -> None:
    first, second = cluster.store_model("bob", seed=1), cluster.store_model("bob", seed=2)

    def expected(model_id: str) -> Any:
        answer = call(cluster, "POST", f"/v1/models/{model_id}/predict", key="bob",
                      body={"inputs": [ROW]})  # fmt: skip
        assert answer.status == 200, answer.body
        return answer.json()

    assert expected(first)["outputs"] != expected(second)["outputs"], "can't tell them apart"
    for version, model_id in enumerate((first, second), start=1):
        registered = call(cluster, "POST", "/v1/registered-models/flowers/versions", key="bob",
                          body={"model_id": model_id})  # fmt: skip
        assert registered.status == 201 and registered.json()["version"] == version
    # every process loads both models into its cache and serves the alias from version 1
    for version, model_id in ((1, first), (2, second)):
        moved = call(cluster, "PUT", "/v1/registered-models/flowers/aliases/production",
                     key="bob", body={"version": version})  # fmt: skip
        assert moved.status == 200, moved.body
        answers = on_every_process(
            cluster,
            lambda: call(
                cluster,
                "POST",
                "/v1/models/flowers@production/predict",
                key="bob",
                body={"inputs": [ROW]},
            ),  # fmt: skip
        )
        wanted = expected(model_id)
        assert {a.status for a in answers} == {200}
        assert all(a.json() == wanted for a in answers), (version, [a.json() for a in answers])


def test_a_second_serve_on_the_port_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """SO_REUSEPORT would let it share the port; serve refuses as one process would."""
    argv = [*CLI, "serve", "--api-processes", "2", "--workers", "0", "--port", str(cluster.port),
            "--database-url", f"sqlite:///{tmp_path}/other.db"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"can't listen on 127.0.0.1 port {cluster.port}: Address already in use" in done.stderr
    assert len({call(cluster, "GET", "/v1/models", key="bob").pid for _ in range(30)}) == 2


def test_sigterm_stops_every_process_and_removes_the_metrics_dir(cluster: Cluster) -> None:
    assert cluster.metrics_dir.is_dir()
    assert cluster.metrics_dir != cluster.log.parent  # not the PROMETHEUS_MULTIPROC_DIR it got
    assert list(cluster.metrics_dir.glob("histogram_*.db"))
    assert not list(cluster.log.parent.glob("*.db"))
    cluster.serve.send_signal(signal.SIGTERM)
    assert cluster.serve.wait(timeout=60) == 0, cluster.logs()
    for pid in cluster.api_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not cluster.metrics_dir.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{cluster.port}/health", timeout=2)


def test_an_api_process_that_dies_stops_the_others(tmp_path: Path) -> None:
    """As with one process: the supervisor stops the rest and exits with the dead one's code."""
    port = free_port()
    log = tmp_path / "serve.log"
    argv = [*CLI, "serve", "--api-processes", "2", "--workers", "0", "--port", str(port),
            "--database-url", f"sqlite:///{tmp_path}/fitserve.db"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    with log.open("wb") as out:
        serve = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while log.read_text().count("Application startup complete") < 2:
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)
        text = log.read_text()
        first, second = (int(p) for p in re.findall(r"started api \d \(pid (\d+)\)", text))
        metrics_dir = Path(re.findall(r"metrics are gathered in (\S+)", text)[0])
        os.kill(first, signal.SIGKILL)
        assert serve.wait(timeout=60) == 128 + signal.SIGKILL, log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert "api 1 exited with code -9; stopping" in log.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
    assert not metrics_dir.exists()


def test_api_processes_is_one_or_more() -> None:
    assert build_parser().parse_args(["serve"]).api_processes == 1
    assert build_parser().parse_args(["serve", "--api-processes", "3"]).api_processes == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--api-processes", "0"])
