"""Prometheus metrics at GET /metrics.

The gauges are read from the database when Prometheus scrapes, through a custom collector, so
they are right however many API processes and workers share the database, and survive restarts.
Two figures live in this process: the prediction latency histogram, observed around
`Predictor.predict` (see `observe_prediction`), and the number of open event streams.

With several API processes (`fitserve serve --api-processes N`), the histogram and the event
stream gauge are prometheus_client's multiprocess kind: each process writes its own values to a
file in the directory MULTIPROCESS_DIR_ENV names (private to one `serve`, which makes it before
the processes start and removes it when they have stopped), and /metrics in any process reads all
of them and reports their totals. The database collector is not per process: the process that
answers the scrape reports it, once.

Like every route, /metrics needs a key unless the server runs keyless on loopback; the figures it
shows are totals across all keys (counts and timings, never a row's content).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import MULTIPROCESS_DIR_ENV
from app.job_status import LEASED, JobStatus
from app.queue.clock import db_now
from app.tables import FALLBACK_STEP_MODE, Job, JobMetric

# The window behind fitserve_epochs_per_second: long enough to smooth one slow epoch, short
# enough to show a stall within a scrape or two.
EPOCH_RATE_WINDOW_SECONDS = 60.0

# Latency buckets from 1 ms (a cached small network) to 10 s (a large batch on CPU).
PREDICTION_SECONDS = Histogram(
    "fitserve_prediction_seconds",
    "Time spent computing predictions (one Predictor.predict call), in seconds.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)

# An event stream that outlives its client would show here as a leak. Several API processes:
# the sum over the running ones ("livesum"; a stopped process' streams are closed).
EVENT_STREAMS = Gauge(
    "fitserve_event_streams_open",
    "Job event streams (GET /v1/jobs/{id}/events) being served by the API processes.",
    registry=None,
    multiprocess_mode="livesum",
)


@contextmanager
def observe_prediction() -> Iterator[None]:
    """Wrap one prediction computation: `with observe_prediction(): outputs = p.predict(x)`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        PREDICTION_SECONDS.observe(time.perf_counter() - start)


def _as_utc(value: Any) -> datetime:
    # SQLite hands back naive datetimes; every time fitserve stores is UTC (the database's clock).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class DatabaseCollector(Collector):
    """Gauges and counters computed from the rows at scrape time, each poll in its own session."""

    def __init__(self, make_session: Callable[[], Session]) -> None:
        self.make_session = make_session

    def describe(self) -> Iterable[Any]:
        # Declaring nothing keeps the registry from running collect() (and so the database
        # queries) when the collector is registered.
        return []

    def collect(self) -> Iterator[Any]:
        with self.make_session() as session:
            yield from self._collect(session)

    def _collect(self, session: Session) -> Iterator[Any]:
        jobs = GaugeMetricFamily("fitserve_jobs", "Jobs by status.", labels=["status"])
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs

        # Queued jobs whose retry backoff has passed: what a free worker would claim next.
        depth = session.scalar(
            select(func.count()).where(Job.status == JobStatus.QUEUED, Job.available_at <= db_now())
        )
        yield GaugeMetricFamily(
            "fitserve_queue_depth", "Queued jobs ready to be claimed.", value=depth or 0
        )

        epochs_total, training_seconds = session.execute(
            select(func.count(), func.sum(JobMetric.values["seconds"].as_float()))
        ).one()
        yield CounterMetricFamily(
            "fitserve_epochs", "Training epochs finished, all jobs.", value=epochs_total or 0
        )
        yield CounterMetricFamily(
            "fitserve_training_seconds",
            "Time spent training, the sum of every finished epoch's measured seconds.",
            value=float(training_seconds or 0.0),
        )
        fallbacks = session.scalar(
            select(func.count(func.distinct(JobMetric.job_id))).where(
                JobMetric.step_mode == FALLBACK_STEP_MODE
            )
        )
        yield CounterMetricFamily(
            "fitserve_cuda_graph_fallbacks",
            "Jobs whose CUDA-graph training steps fell back to eager ones (the reason is the "
            "job's step_mode_reason).",
            value=fallbacks or 0,
        )
        recent = session.scalar(
            select(func.count()).where(JobMetric.created_at >= db_now(-EPOCH_RATE_WINDOW_SECONDS))
        )
        yield GaugeMetricFamily(
            "fitserve_epochs_per_second",
            f"Epochs finished per second over the last {EPOCH_RATE_WINDOW_SECONDS:g} s.",
            value=(recent or 0) / EPOCH_RATE_WINDOW_SECONDS,
        )

        yield from self._heartbeats(session)

    def _heartbeats(self, session: Session) -> Iterator[Any]:
        now = _as_utc(session.scalar(select(db_now())))
        rows = session.execute(
            select(Job.claimed_by, func.max(Job.heartbeat_at))
            .where(
                Job.status.in_(LEASED),
                Job.claimed_by.is_not(None),
                Job.heartbeat_at.is_not(None),
            )
            .group_by(Job.claimed_by)
        ).all()
        stamp = GaugeMetricFamily(
            "fitserve_worker_heartbeat_timestamp_seconds",
            "Unix time of each busy worker's last heartbeat (database clock).",
            labels=["worker"],
        )
        age = GaugeMetricFamily(
            "fitserve_worker_heartbeat_age_seconds",
            "Seconds since each busy worker's last heartbeat; a lease expires past "
            "FITSERVE_LEASE_SECONDS.",
            labels=["worker"],
        )
        for worker, beat in rows:  # both non-NULL by the query
            beat = _as_utc(beat)
            stamp.add_metric([str(worker)], beat.timestamp())
            age.add_metric([str(worker)], max(0.0, (now - beat).total_seconds()))
        yield stamp
        yield age
        yield GaugeMetricFamily(
            "fitserve_workers_busy", "Workers holding a job's lease.", value=len(rows)
        )


def install_metrics(app: FastAPI) -> None:
    """The registry /metrics (app/api/prometheus.py) serves, as `app.state.metrics_registry`. It
    reads `app.state.sessionmaker` lazily, at scrape time, because the lifespan builds it after
    create_app returns."""

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(lambda: app.state.sessionmaker()))
    if multiprocess_dir := os.environ.get(MULTIPROCESS_DIR_ENV):
        # Every API process' histogram and gauge, this one's included, from their files.
        MultiProcessCollector(registry, path=multiprocess_dir)
    else:
        registry.register(PREDICTION_SECONDS)
        registry.register(EVENT_STREAMS)
    app.state.metrics_registry = registry
