"""Request and response models of /v1/studies: StudyCreate / StudyRead / StudyList."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import EXAMPLE_ID, EXAMPLE_TIME, IRIS_NETWORK, IRIS_TRAINING, Name, Timestamp
from app.studies.tuner import Direction, PrunerName, SamplerName, TrialStateName
from models import NetworkSpec, TrainingConfig
from models.training_spec import MonitorName

MAX_TRIALS = 1000
MAX_PARALLEL = 64
MAX_DIMENSIONS = 32

SEARCH_SPACE_EXAMPLE: Any = {
    "network.layers[0].units": {"int": [4, 64], "log": True},
    "training.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": True},
    "training.batch_size": {"choice": [8, 16, 32, "full"]},
}

SEARCH_SPACE_DOC = """Which fields of `network` and `training` vary, and over what.

Keys are paths into the spec: `network.` or `training.`, then `.field` and `[index]` steps
(`network.layers[1].rate`, `training.optimizer.learning_rate`; an optimizer given by name is
expanded to its object form). Every container on the way must be in the spec; the field at the
end may be left out of it. Values are one distribution each:

- `{"int": [low, high]}` with optional `"log": true` or `"step": k` — integers, both ends included;
- `{"float": [low, high]}` with optional `"log": true` (low > 0) or `"step": s`;
- `{"choice": [v1, v2, ...]}` — numbers, strings, booleans or null (at most 100 values).

A grid search (`sampler: "grid"`) visits every combination, so its floats need a `step` or a
choice. Each distribution's extremes are checked against the spec and the dataset when the study
is created (a corner that would exceed the parameter budget is refused then, not at trial 37)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Objective(_Request):
    metric: MonitorName = Field(
        description="The per-epoch metric a trial is judged by, after its last epoch. val_* "
        "metrics need training.validation_split > 0.",
        examples=["val_accuracy"],
    )
    direction: Direction | None = Field(
        None,
        description="minimize or maximize; default: maximize accuracy, minimize loss and mae.",
        examples=["maximize"],
    )


class StudyCreate(_Request):
    """A hyperparameter search: trials are ordinary jobs on the shared queue, at most
    `max_parallel` at a time, each sampled when one finishes, pruned epoch by epoch."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "iris-search",
                    "dataset": "iris",
                    "network": IRIS_NETWORK,
                    "training": {**IRIS_TRAINING, "epochs": 30, "validation_split": 0.2},
                    "search_space": SEARCH_SPACE_EXAMPLE,
                    "objective": {"metric": "val_accuracy", "direction": "maximize"},
                    "n_trials": 12,
                    "max_parallel": 2,
                    "sampler": "tpe",
                    "pruner": "median",
                    "seed": 1,
                }
            ]
        }
    )

    name: Name = Field(
        description="A label for the study. When the study completes, its best trial's model is "
        "registered under a model name made from it, as that name's next version (as MLflow "
        "users register a tuning run's best model): accents dropped, lower-cased, each run of "
        "characters other than a-z, 0-9, '.', '_' and '-' made one '-', trimmed of '-', '.' "
        "and '_' at both ends, at most 63 characters ('Iris Search v2' registers as "
        "'iris-search-v2'). Studies of one name add versions to one model name. A name that "
        "leaves nothing (no letter or digit) or 32 hex characters (a model id) is refused "
        "with 422.",
        examples=["iris-search"],
    )
    dataset: Name = Field(
        description="Dataset id or name (built-ins: iris, wine, ...).", examples=["iris"]
    )
    network: NetworkSpec = Field(description="The base network every trial starts from.")
    training: TrainingConfig = Field(description="The base training config.")
    search_space: dict[str, dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_DIMENSIONS,
        description=SEARCH_SPACE_DOC,
        examples=[SEARCH_SPACE_EXAMPLE],
    )
    objective: Objective = Field(description="What a trial is judged by.")
    n_trials: int = Field(ge=1, le=MAX_TRIALS, description="Trials to run.", examples=[12])
    max_parallel: int = Field(
        2, ge=1, le=MAX_PARALLEL, description="Trials queued or running at once.", examples=[2]
    )
    sampler: SamplerName = Field(
        "tpe",
        description="tpe (Optuna's TPE), random, or grid (every combination; n_trials at most "
        "the grid's size).",
        examples=["tpe"],
    )
    pruner: PrunerName = Field(
        "median",
        description="Stops unpromising trials at an epoch's end: median (Optuna's default: "
        "worse than the median of earlier trials at the same epoch, after 5 trials), "
        "successive_halving (rungs at 1, 4, 16 ... epochs, keeping the best quarter), "
        "hyperband (Optuna's, with KerasTuner's factor 3 and max_epochs = training.epochs; "
        "its most aggressive bracket first judges a trial after 1 epoch, where KerasTuner's "
        "first round trains ceil(epochs / 3^k): 3 of 20 — measured in bench/RESULTS.md), "
        "or none.",
        examples=["median"],
    )
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Seeds the sampler: same history, same params."
    )


class TrialRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="0-based, in the order the trials were sampled.")
    job_id: str = Field(description="The job that trains it.", examples=[EXAMPLE_ID])
    params: dict[str, Any] = Field(description="Search-space path -> sampled value.")
    state: TrialStateName = Field(description="running, complete, pruned, failed or cancelled.")
    value: float | None = Field(
        None, description="The objective after its last epoch (pruned: the epoch it stopped at)."
    )
    epochs_run: int = Field(description="Epochs it trained.")
    pruned_at_epoch: int | None = Field(None, description="The epoch the pruner stopped it at.")
    model_id: str | None = Field(None, description="Its trained model, once it completed.")
    created_at: Timestamp
    finished_at: Timestamp | None = None


class StudyCounts(BaseModel):
    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    cancelled: int = 0


class StudySummary(BaseModel):
    id: str = Field(examples=[EXAMPLE_ID])
    name: str = Field(examples=["iris-search"])
    dataset_id: str = Field(examples=[EXAMPLE_ID])
    status: Literal["running", "completed", "cancelled"] = Field(
        description="running until n_trials trials have ended (or it is cancelled)."
    )
    objective: Objective
    n_trials: int
    max_parallel: int
    sampler: SamplerName
    pruner: PrunerName
    seed: int | None
    counts: StudyCounts = Field(description="Trials by state.")
    best_trial: TrialRead | None = Field(
        None, description="The complete trial with the best objective (earliest on ties)."
    )
    register_as: str | None = Field(
        None,
        description="The model name (made from `name`) the best trial's model is registered "
        "under when the study completes: GET /v1/registered-models/{register_as}; predict "
        "with /v1/models/{register_as}@{registered_version}/predict. null for a study made "
        "before model names existed.",
        examples=["iris-search"],
    )
    registered_version: int | None = Field(
        None,
        description="The version of `register_as` the best model became when the study "
        "completed; null while it runs, when no trial completed, or when it was cancelled "
        "(a cancelled study registers nothing).",
        examples=[3],
    )
    created_at: Timestamp = Field(examples=[EXAMPLE_TIME])
    finished_at: Timestamp | None = None


class StudyRead(StudySummary):
    search_space: dict[str, dict[str, Any]]
    network: dict[str, Any] = Field(description="The base network.")
    training: dict[str, Any] = Field(description="The base training config.")
    trials: list[TrialRead] = Field(description="Every trial so far, by number.")


class StudyList(BaseModel):
    items: list[StudySummary] = Field(description="Your studies, newest first.")
