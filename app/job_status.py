"""A job's status: the one type the table, the schemas, the services and the store share.

Which statement moves a job from one status to another is drawn once, in app/queue/store.py's
docstring; the table's CHECK constraints are generated from this enum (app/tables.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life: queued, then running (cancelling once a cancel is asked for),
    then succeeded, failed or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# Ended for good: `finished_at` is set exactly for these (a CHECK constraint says so).
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# Held by a worker under a lease.
LEASED = (JobStatus.RUNNING, JobStatus.CANCELLING)
# Not ended yet: queued, or held by a worker.
ACTIVE = (JobStatus.QUEUED, *LEASED)


def sql_list(statuses: Iterable[JobStatus]) -> str:
    """`('a', 'b')`: statuses as an SQL list, for CHECK constraints."""
    return "(" + ", ".join(f"'{status.value}'" for status in statuses) + ")"
