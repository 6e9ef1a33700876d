"""ORM rows. The job row is the queue entry; the schema changes only through a migration.

Ids are opaque 32-character hex strings (uuid4) so they reveal nothing about other tenants.
`owner_id` is the API key that created a row; NULL means the keyless loopback mode (or a
built-in dataset, visible to everyone).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.job_status import TERMINAL, JobStatus, sql_list

# Stable constraint names, so Alembic autogenerate and hand-written migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TASKS = ("classification", "regression")


def new_id() -> str:
    return uuid.uuid4().hex


class StatusColumn(TypeDecorator[JobStatus]):
    """A job's status: a JobStatus in Python, VARCHAR(20) in the database."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # sha256 of the secret; the secret itself is shown once, at creation, and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (CheckConstraint(f"task IN {TASKS}", name="task"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    task: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int]
    n_features: Mapped[int]
    # Regression: number of target columns. Classification: 1 (targets are class indices).
    n_outputs: Mapped[int] = mapped_column(Integer, default=1)
    feature_names: Mapped[list[str]] = mapped_column(JSON)
    target_names: Mapped[list[str]] = mapped_column(JSON)
    # Class labels in a stable order (sorted); index i is class i. NULL for regression.
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    # safetensors: targets {"y": int64 (rows,) class indices | float32 (rows, n_outputs)};
    # features (the last column) {"x": float32 (rows, n_features)}, or for a token-list dataset
    # {"values": int64 (tokens,), "offsets": int64 (rows + 1,)} (n_features 0).
    targets: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    # A token-list (sequences) dataset: how many token ids, and the largest (a network's
    # category_encoding needs num_tokens above it). NULL for a feature matrix (migration 0004).
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    max_token_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Set when a dataset that jobs or models still refer to is deleted: its arrays are emptied and
    # it is hidden, but the rows that name it keep their provenance (migration 0002).
    deleted_at: Mapped[datetime | None]
    # Last: SQLite writes a dataset's features in pieces into a zeroblob, which it leaves unbuilt
    # only at the end of a row (app/blobs.py; moved there on SQLite by migration 0016). A column
    # added after it must be NULL in a new row, or each insert builds the zeros in memory.
    features: Mapped[bytes] = mapped_column(LargeBinary)

    @property
    def kind(self) -> str:
        """ "sequences" (token lists) or "features" (a numeric matrix)."""
        return "sequences" if self.tokens is not None else "features"


# The step mode of steps that were to be replayed from a CUDA graph and fell back to eager ones
# (models/cuda_graph.py gives up on a capture failure or a changed learning rate); the reason is
# recorded beside it.
FALLBACK_STEP_MODE = "eager (fallback)"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {sql_list(JobStatus)}", name="status"),
        # A job has finished exactly when it is in a terminal state.
        CheckConstraint(
            f"(status IN {sql_list(TERMINAL)}) = (finished_at IS NOT NULL)", name="finished_at"
        ),
        CheckConstraint("attempts >= 0 AND lease_token >= 0", name="counters"),
        # The claim query: the oldest available queued (or lease-expired running) job.
        Index("ix_jobs_claim", "status", "available_at", "created_at"),
        # The claim's fair share: a key's jobs on workers, and its queued jobs by age (0017).
        Index("ix_jobs_owner_status", "owner_id", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    network: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[JobStatus] = mapped_column(StatusColumn(), default=JobStatus.QUEUED)
    epochs: Mapped[int]
    # Epochs finished so far (progress); the latest metrics row is for this epoch.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # Durability: the claim bumps lease_token; every later worker write is fenced by it.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    # Seconds on workers, every attempt together: each heartbeat and epoch adds the time since
    # the previous one (or the claim). The time limit is checked against it (0015).
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    # Not claimable before this (retry backoff).
    available_at: Mapped[datetime] = mapped_column(server_default=func.now())
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(50))
    # Why its validation figures may mislead (found at submit; migration 0006), or NULL.
    warning: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(50))
    # What the latest epoch's steps ran as (app/queue/child.py: ran): the precision observed from
    # them, the step mode, and why eager when eager. NULL until an epoch of this attempt ends.
    precision: Mapped[str | None] = mapped_column(String(10))
    step_mode: Mapped[str | None] = mapped_column(String(30))  # FALLBACK_STEP_MODE among them
    step_mode_reason: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str | None] = mapped_column(String(32))
    # Register the model under this name (its next version) when the job succeeds (0010).
    register_as: Mapped[str | None] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class JobMetric(Base):
    """One row per finished epoch: the EpochRecord as a JSON object."""

    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The claim that wrote this epoch (fencing audit: no two attempts interleave).
    lease_token: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    loss: Mapped[float | None] = mapped_column(Float)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What this epoch's steps ran as (NULL on rows written before it was recorded).
    step_mode: Mapped[str | None] = mapped_column(String(30))
    step_mode_reason: Mapped[str | None] = mapped_column(Text)
    precision: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class JobCheckpoint(Base):
    """The latest checkpoint of a job (models.Checkpoint bytes), replaced each epoch."""

    __tablename__ = "job_checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int]
    lease_token: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class JobClaim(Base):
    """Audit trail: one row per claim, so overlapping executions can be ruled out."""

    __tablename__ = "job_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    lease_token: Mapped[int]
    worker: Mapped[str] = mapped_column(String(200))
    claimed_at: Mapped[datetime] = mapped_column(server_default=func.now())
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(20))


class Model(Base):
    """A trained network: its spec, final weights (safetensors) and what predict needs."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    network: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(20))
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    # Final epoch's metrics row.
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # models.save_model() bytes: safetensors with the spec and standardization in its metadata.
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


STUDY_STATUSES = ("running", "completed", "cancelled")
TRIAL_STATES = ("running", "complete", "pruned", "failed", "cancelled")


class Study(Base):
    """A hyperparameter search: a base spec, a search space and an objective. Its trials are
    ordinary jobs (study_trials names them); samplers and pruners are asked over these rows
    (app/studies/tuner.py)."""

    __tablename__ = "studies"
    __table_args__ = (
        CheckConstraint(f"status IN {STUDY_STATUSES}", name="status"),
        CheckConstraint("direction IN ('minimize', 'maximize')", name="direction"),
        CheckConstraint("n_trials >= 1 AND max_parallel >= 1", name="counts"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    # The base spec every trial starts from (validated, defaults filled in).
    network: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    search_space: Mapped[dict[str, Any]] = mapped_column(JSON)
    objective_metric: Mapped[str] = mapped_column(String(20))
    direction: Mapped[str] = mapped_column(String(10))
    n_trials: Mapped[int]
    max_parallel: Mapped[int]
    sampler: Mapped[str] = mapped_column(String(20))
    pruner: Mapped[str] = mapped_column(String(30))
    seed: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(20), default="running")
    # The model name its best trial's model is registered under when it completes, and the
    # version that made (None until then, or when no trial completed).
    register_as: Mapped[str | None] = mapped_column(String(63))
    registered_version: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]


class StudyTrial(Base):
    """One trial of a study: the params it sampled and the job that trains them."""

    __tablename__ = "study_trials"
    __table_args__ = (CheckConstraint(f"state IN {TRIAL_STATES}", name="state"),)

    study_id: Mapped[str] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    # 0-based, in the order the trials were asked for (Optuna's trial number).
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # search-space path -> sampled value
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A grid search's point (Optuna GridSampler's grid_id); NULL for other samplers.
    grid_id: Mapped[int | None]
    # What the pruner noted on the trial as it ran (successive halving and Hyperband record the
    # value each trial reached each rung with), so a replay judges the next trial as Optuna would.
    pruner_attrs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="running")
    # The objective after the trial's last epoch; NULL until it ends (or when it had none).
    value: Mapped[float | None] = mapped_column(Float)
    # The epoch at which the pruner stopped it.
    pruned_at_epoch: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]


class StudyEvent(Base):
    """A study's event log, appended under the study row's lock: `seq` numbers the events of one
    study 1, 2, 3 ... so its event stream resumes exactly from a Last-Event-ID."""

    __tablename__ = "study_events"
    __table_args__ = (Index("ix_study_events_trial_epoch", "study_id", "trial_number", "epoch"),)

    study_id: Mapped[str] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "status" (the study's), "trial" (a trial's state), "epoch" (a trial's objective per epoch)
    kind: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    # An epoch event's trial and epoch (NULL for other kinds), so whether one was told is one
    # indexed lookup (migration 0013).
    trial_number: Mapped[int | None]
    epoch: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class RegisteredModel(Base):
    """A name for a key's models (MLflow's registered model): numbered versions, movable aliases.
    Names are unique per key; the keyless owner (NULL) is one owner too, hence the COALESCE."""

    __tablename__ = "registered_models"
    __table_args__ = (
        Index(
            "uq_registered_models_owner_name",
            func.coalesce(text("owner_id"), ""),
            "name",
            unique=True,
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    # The last version number given: a deleted version's number is never given again (MLflow's
    # rule), so `name@3` never comes to mean another model.
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ModelVersion(Base):
    """Version `version` (1, 2, ...) of a registered name: one trained model."""

    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint("version >= 1", name="version"),)

    registered_model_id: Mapped[str] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ModelAlias(Base):
    """An alias (production, staging, ...) pointing at one version of a name; moved by UPDATE."""

    __tablename__ = "model_aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["registered_model_id", "version"],
            ["model_versions.registered_model_id", "model_versions.version"],
            name="fk_model_aliases_version_model_versions",
        ),
    )

    registered_model_id: Mapped[str] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
