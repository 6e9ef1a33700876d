"""JobStatus is the one list of states: the migrated database's CHECK constraints hold exactly its
members (so a new status without a migration fails here), rows load as JobStatus, and the
database refuses anything else."""

from __future__ import annotations

import re

import pytest
from queue_kit import MakeJob
from sqlalchemy import CheckConstraint, Engine, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from app.job_status import TERMINAL, JobStatus
from app.queue import store
from app.tables import Job


def _constraint_sql(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return str(
                conn.execute(
                    text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :n"),
                    {"n": name},
                ).scalar_one()
            )
        table_sql = str(
            conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'jobs'")).scalar_one()
        )
        match = re.search(rf"CONSTRAINT {name} CHECK \((.*)\),?\s*$", table_sql, re.MULTILINE)
        assert match is not None, table_sql
        return match.group(1)


def test_the_migrated_constraints_hold_exactly_the_enums_statuses(engine: Engine) -> None:
    statuses = re.findall(r"'(\w+)'", _constraint_sql(engine, "ck_jobs_status"))
    assert statuses == [status.value for status in JobStatus]
    terminal = re.findall(r"'(\w+)'", _constraint_sql(engine, "ck_jobs_finished_at"))
    assert terminal == [status.value for status in TERMINAL]
    if engine.dialect.name == "sqlite":  # the migration's SQL is the text tables.py generates
        generated = {str(c.name).removeprefix("ck_jobs_"): str(c.sqltext) for c in _checks()}
        assert _constraint_sql(engine, "ck_jobs_status") == generated["status"]
        assert _constraint_sql(engine, "ck_jobs_finished_at") == generated["finished_at"]


def _checks() -> list[CheckConstraint]:
    return [c for c in Job.__table__.constraints if isinstance(c, CheckConstraint)]


def test_rows_load_as_job_status(sessions: sessionmaker[Session], make_job: MakeJob) -> None:
    job_id = make_job()
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status is JobStatus.QUEUED
        assert store.cancel_job(session, job_id=job_id).status is JobStatus.CANCELLED


def test_the_database_refuses_a_status_outside_the_enum(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job()
    with pytest.raises(IntegrityError), sessions.begin() as session:
        # around the ORM type, which would refuse it before the database sees it
        session.execute(text("UPDATE jobs SET status = 'paused' WHERE id = :id"), {"id": job_id})
    with pytest.raises(StatementError, match="'paused' is not a valid JobStatus"):
        with sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="paused"))
