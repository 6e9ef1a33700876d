"""GET /v1/jobs/{id}/events against a live server and a real worker: every epoch exactly once,
also across a reconnect with Last-Event-ID; the last event is the terminal status; the server
stops its work when the client leaves."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fitserve_client.client_types import Event, EventParser
from prometheus_client.parser import text_string_to_metric_families

from tests.ux.conftest import IRIS_NETWORK, IRIS_TRAINING, LiveServer

TERMINAL = {"succeeded", "failed", "cancelled"}


def submit(server: LiveServer, **training: Any) -> dict[str, Any]:
    body = {"network": IRIS_NETWORK, "dataset": "iris", "training": {**IRIS_TRAINING, **training}}
    response = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def read_events(
    server: LiveServer,
    job_id: str,
    *,
    last_event_id: str | None = None,
    until_epoch: int | None = None,
    max_events: int | None = None,
) -> list[Event]:
    """Events until the terminal status (or until `until_epoch` / `max_events`, then hang up)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    parser, events = EventParser(), []
    timeout = httpx.Timeout(10, read=60)
    with httpx.stream(
        "GET", f"{server.url}/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is None:
                continue
            events.append(event)
            if event.event == "status" and event.data["status"] in TERMINAL:
                break
            if until_epoch is not None and event.event == "epoch":
                if event.data["epoch"] >= until_epoch:
                    break
            if max_events is not None and len(events) >= max_events:
                break
    return events


def epochs_of(events: list[Event]) -> list[int]:
    return [e.data["epoch"] for e in events if e.event == "epoch"]


def open_streams(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "fitserve_event_streams_open":
            return family.samples[0].value
    raise AssertionError("fitserve_event_streams_open missing from /metrics")


def test_every_epoch_exactly_once_across_a_reconnect(live_server: LiveServer) -> None:
    epochs = 12
    job = submit(live_server, epochs=epochs)

    first = read_events(live_server, job["id"], until_epoch=3)
    assert first[0].event == "status"  # a connection opens with the job's current status
    resume_from = first[-1].id
    assert resume_from is not None
    second = read_events(live_server, job["id"], last_event_id=resume_from)

    streamed = epochs_of(first) + epochs_of(second)
    assert streamed == list(range(1, epochs + 1)), streamed
    last = second[-1]
    assert last.event == "status" and last.data["status"] == "succeeded", last
    assert last.data["model_id"]
    terminal = [e for e in first + second if e.event == "status" and e.data["status"] in TERMINAL]
    assert terminal == [last]

    # The stream carries the same rows as the metrics endpoint, field for field.
    rows = httpx.get(f"{live_server.url}/v1/jobs/{job['id']}/metrics", timeout=10).json()
    by_epoch = {e.data["epoch"]: e.data for e in first + second if e.event == "epoch"}
    for row in rows["epochs"]:
        streamed_row = by_epoch[row["epoch"]]
        assert streamed_row["loss"] == pytest.approx(row["loss"])
        assert streamed_row.get("val_loss") == pytest.approx(row.get("val_loss"))
        assert "layer_grad_norms" in streamed_row


def test_a_finished_job_replays_from_the_start_and_from_any_id(
    live_server: LiveServer, trained_job: dict[str, Any]
) -> None:
    events = read_events(live_server, trained_job["id"])
    assert epochs_of(events) == list(range(1, trained_job["epochs"] + 1))
    assert events[-1].data["status"] == "succeeded"

    tail = read_events(live_server, trained_job["id"], last_event_id="17")
    assert epochs_of(tail) == list(range(18, trained_job["epochs"] + 1))
    assert [e.id for e in tail if e.event == "epoch"] == [str(n) for n in epochs_of(tail)]


def test_the_server_stops_streaming_when_the_client_leaves(live_server: LiveServer) -> None:
    job = submit(live_server, epochs=5000, batch_size=4)
    try:
        events = read_events(live_server, job["id"], max_events=1)  # then hang up
        assert events[0].event == "status"
        deadline = time.monotonic() + 10
        while open_streams(live_server) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_streams(live_server) == 0
    finally:
        httpx.post(f"{live_server.url}/v1/jobs/{job['id']}/cancel", timeout=10)
    # A cancelled job's stream ends with the cancelled status.
    events = read_events(live_server, job["id"])
    assert events[-1].event == "status" and events[-1].data["status"] == "cancelled"


def test_unknown_job_and_bad_last_event_id(live_server: LiveServer) -> None:
    missing = httpx.get(f"{live_server.url}/v1/jobs/{'f' * 32}/events", timeout=10)
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]
    job = submit(live_server, epochs=1)
    bad = httpx.get(
        f"{live_server.url}/v1/jobs/{job['id']}/events",
        headers={"Last-Event-ID": "epoch-3"},
        timeout=10,
    )
    assert bad.status_code == 422
    assert "Last-Event-ID" in bad.json()["detail"]
