"""Request and response models, in families: DatasetCreate / DatasetRead / DatasetList, ...

Requests are strict (see issue 5): unknown fields are errors, strings are never coerced to
numbers, floats are finite, every number and name is bounded. Every field has a description and
an example, and the examples run as they are: together they train and query the iris model.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.job_status import JobStatus
from models import NetworkSpec, TrainingConfig
from models import summary as _summary
from models.spec import IRIS_NETWORK as _IRIS_NETWORK
from models.spec import IRIS_TRAINING as _IRIS_TRAINING
from models.spec import MAX_NUM_TOKENS

# Typed loosely: pydantic types json_schema_extra as JSON values, which dicts of objects are not.
IRIS_NETWORK: Any = _IRIS_NETWORK
IRIS_TRAINING: Any = _IRIS_TRAINING

Task = Literal["classification", "regression"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 200
EXAMPLE_ID = "6f1d2c3b4a5e4f60818293a4b5c6d7e8"
EXAMPLE_TIME = "2026-11-27T18:00:00Z"


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (such as NUL or newlines)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive UTC timestamps (CURRENT_TIMESTAMP); say so, as Postgres does.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


Timestamp = Annotated[datetime, AfterValidator(_utc)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(_printable)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorResponse(BaseModel):
    """Every error: a message that says what to fix, and a machine-readable code."""

    detail: str = Field(description="What is wrong and how to fix it.", examples=["job not found"])
    code: str = Field(description="Machine-readable error code.", examples=["not_found"])
    errors: list[dict[str, Any]] | None = Field(
        None,
        description="For validation errors: each problem's location and message.",
        examples=[[{"loc": ["body", "network", "layers", 0, "units"], "msg": "Field required"}]],
    )


# What every route behind OwnerDep answers when keys are required and none (or a bad one) is sent.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No or unknown API key."}
}


# ------------------------------------------------------------------ health


class Health(BaseModel):
    status: Literal["ok"] = Field(description="ok when the database answers.", examples=["ok"])
    database: Literal["sqlite", "postgresql"] = Field(
        description="The database engine behind the service.", examples=["sqlite"]
    )
    version: str = Field(description="fitserve's version.", examples=["0.1.0"])


# ------------------------------------------------------------------ datasets

IRIS_ROWS: Any = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
IRIS_FEATURES: Any = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]

TargetValue = str | int | float | list[float]
# A token id no category_encoding layer could take (num_tokens <= MAX_NUM_TOKENS) is refused here.
TokenId = Annotated[int, Field(ge=0, le=MAX_NUM_TOKENS - 1)]


class DatasetCreate(_Request):
    """A dataset as JSON arrays. (A CSV file is sent as multipart/form-data instead: fields `file`,
    `target` (column name, comma-separated for several), `name`, and optionally `task`.)"""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "iris-sample",
                    "task": "classification",
                    "features": IRIS_ROWS,
                    "targets": ["setosa", "versicolor", "virginica"],
                    "feature_names": IRIS_FEATURES,
                }
            ]
        }
    )

    name: Name = Field(
        description="A label for the dataset (not unique).", examples=["iris-sample"]
    )
    task: Task | None = Field(
        None,
        description="classification or regression; inferred when left out: text labels and "
        "integers with at most 20 distinct values are classes, other numbers a regression target.",
        examples=["classification"],
    )
    features: list[list[float]] | None = Field(
        None,
        min_length=1,
        description="One row of numeric features per example; every row the same length. "
        "Give features or sequences.",
        examples=[IRIS_ROWS],
    )
    sequences: list[list[TokenId]] | None = Field(
        None,
        min_length=1,
        description="Instead of features: one document per example, a list of token ids "
        "(integers 0..999999, e.g. word indices) of any length, [] for an empty one. Stored as "
        "token lists, never as a dense matrix; train it with a network whose first layer is "
        '{"type": "category_encoding", "num_tokens": N} (N above the largest id).',
        examples=[[[1, 14, 22, 16], [1, 3267, 699], [1, 53, 2, 8]]],
    )
    targets: list[TargetValue] = Field(
        min_length=1,
        description="One target per row: class labels (strings or integers) for classification; "
        "numbers, or rows of numbers for several outputs, for regression.",
        examples=[["setosa", "versicolor", "virginica"]],
    )
    feature_names: list[Name] | None = Field(
        None,
        description="One name per feature column; x0, x1, ... when left out.",
        examples=[IRIS_FEATURES],
    )
    target_names: list[Name] | None = Field(
        None,
        description="Names of the target columns (regression with several outputs).",
        examples=[["species"]],
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _one_kind_per_target(cls, v: Any) -> Any:
        # Checked before the union so a bad item gets one clear message, not one per union arm.
        if not isinstance(v, list):
            return v
        for i, item in enumerate(v):
            ok = isinstance(item, (str, int, float)) and not isinstance(item, bool)
            ok = ok or (
                isinstance(item, list)
                and all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in item)
            )
            if not ok:
                raise ValueError(
                    f"targets[{i}] is {type(item).__name__}; a target is a class label (string or "
                    "integer), a number, or a list of numbers"
                )
        return v

    @model_validator(mode="after")
    def _features_or_sequences(self) -> DatasetCreate:
        if (self.features is None) == (self.sequences is None):
            raise ValueError(
                "give the inputs as features (rows of numbers) or as sequences (lists of token "
                "ids), exactly one of them"
            )
        if self.sequences is not None and self.feature_names is not None:
            raise ValueError("feature_names names feature columns; sequences have none")
        return self


class DatasetRead(_Response):
    id: str = Field(description="Dataset id.", examples=[EXAMPLE_ID])
    name: str = Field(
        description="The dataset's name; built-ins are referable by it.", examples=["iris"]
    )
    builtin: bool = Field(description="A built-in dataset shipped with fitserve.", examples=[True])
    task: Task = Field(description="classification or regression.", examples=["classification"])
    rows: int = Field(description="Number of examples.", examples=[150])
    n_features: int = Field(
        description="Feature columns: the network's input_dim (0 for a sequences dataset).",
        examples=[4],
    )
    n_outputs: int = Field(
        description="Target columns (regression); 1 for classification.", examples=[1]
    )
    kind: Literal["features", "sequences"] = Field(
        description="features: a numeric matrix; sequences: token lists, for a network whose "
        "first layer is category_encoding.",
        examples=["features"],
    )
    tokens: int | None = Field(
        None, description="Token ids in all (sequences only).", examples=[None]
    )
    max_token_id: int | None = Field(
        None,
        description="The largest token id (sequences only): num_tokens must be above it.",
        examples=[None],
    )
    feature_names: list[str] = Field(description="Feature column names.", examples=[IRIS_FEATURES])
    target_names: list[str] = Field(description="Target column names.", examples=[["species"]])
    classes: list[str | int] | None = Field(
        None,
        description="Class labels as the dataset spelled them, sorted; class i is classes[i].",
        examples=[["setosa", "versicolor", "virginica"]],
    )
    sha256: str = Field(
        description="sha256 of the stored features and targets (safetensors bytes).",
        examples=["345ebab3" + "0" * 56],
    )
    created_at: Timestamp = Field(description="When it was stored.", examples=[EXAMPLE_TIME])


class DatasetList(BaseModel):
    items: list[DatasetRead] = Field(description="Built-ins and your datasets, newest first.")


# ------------------------------------------------------------------ networks


IRIS_SUMMARY_LAYERS = [
    {"name": "dense", "type": "dense", "output_shape": [None, 8], "params": 40},
    {"name": "dense_1", "type": "dense", "output_shape": [None, 8], "params": 72},
    {"name": "dense_2", "type": "dense", "output_shape": [None, 3], "params": 27},
]


class LayerSummaryRead(BaseModel):
    name: str = Field(
        description="Keras-style layer name (dense, dense_1, ...).", examples=["dense"]
    )
    type: str = Field(description="Layer type.", examples=["dense"])
    output_shape: list[int | None] = Field(
        description="Output shape; null is the batch dimension.", examples=[[None, 8]]
    )
    params: int = Field(description="Parameters in this layer.", examples=[40])


class NetworkSummary(BaseModel):
    """Keras' model.summary() as data: 4→8→8→3 has 40 + 72 + 27 = 139 parameters."""

    layers: list[LayerSummaryRead] = Field(
        description="One entry per layer, in order.", examples=[IRIS_SUMMARY_LAYERS]
    )
    total_params: int = Field(description="All parameters.", examples=[139])
    trainable_params: int = Field(description="Parameters the optimizer updates.", examples=[139])
    non_trainable_params: int = Field(
        description="E.g. batch normalization's moving mean and variance.", examples=[0]
    )


# ------------------------------------------------------------------ jobs


# A model name: as MLflow's registered models, lower-case so names are unambiguous in URLs.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
EXAMPLE_MODEL_ID = "3f2c0e6a9b8d4c1e8f7a6b5c4d3e2f10"
MODEL_REF_DOC = (
    "A model id (32 hex characters), or one of your model names: `iris` is the version its "
    "`production` alias points at, else its latest version; `iris@2` is version 2; "
    "`iris@staging` the version that alias points at. Resolved on every request, so an alias "
    "move counts from the next one."
)
OIP_VERSION_DOC = (
    "A version number (1, 2, ...) or an alias (production, staging, ...) of the model name; a "
    "model id has the one version 1."
)


class JobCreate(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "iris 4-8-8-3",
                    "network": IRIS_NETWORK,
                    "dataset": "iris",
                    "training": IRIS_TRAINING,
                }
            ]
        }
    )

    network: NetworkSpec = Field(
        description="The network: Keras Sequential layers.", examples=[IRIS_NETWORK]
    )
    dataset: Name = Field(
        description="A dataset id, or a built-in's name "
        "(iris, wine, breast_cancer, diabetes, digits).",
        examples=["iris"],
    )
    training: TrainingConfig = Field(
        description="Keras' compile() and fit() arguments.", examples=[IRIS_TRAINING]
    )
    name: Name | None = Field(None, description="A label for the job.", examples=["iris 4-8-8-3"])
    register_as: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="Register the trained model under this name, as its next version, when the "
        "job succeeds (a name of 32 hex characters is refused: it reads as a model id).",
        examples=["iris"],
    )


EXAMPLE_METRICS: Any = {
    "epoch": 200,
    "loss": 0.061,
    "accuracy": 0.98,
    "learning_rate": 0.001,
    "seconds": 0.02,
    "grad_norm": 0.12,
    "layer_grad_norms": {"dense": 0.08, "dense_1": 0.07, "dense_2": 0.05},
}


class EpochMetrics(BaseModel):
    """One finished epoch, as models.EpochRecord.as_dict() writes it (other keys pass through)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_METRICS]})

    epoch: int = Field(description="1-based epoch number.", examples=[200])
    loss: float | None = Field(
        None, description="Mean training loss of the epoch.", examples=[0.061]
    )
    accuracy: float | None = Field(
        None, description="Training accuracy (classification).", examples=[0.98]
    )
    mae: float | None = Field(
        None, description="Training mean absolute error (regression).", examples=[None]
    )
    val_loss: float | None = Field(None, description="Validation loss.", examples=[None])
    val_accuracy: float | None = Field(None, description="Validation accuracy.", examples=[None])
    val_mae: float | None = Field(
        None, description="Validation mean absolute error.", examples=[None]
    )
    learning_rate: float | None = Field(None, description="Learning rate used.", examples=[0.001])
    seconds: float | None = Field(None, description="Wall time of the epoch.", examples=[0.02])
    grad_norm: float | None = Field(
        None, description="Global gradient norm (last step).", examples=[0.12]
    )
    layer_grad_norms: dict[str, float | None] | None = Field(
        None,
        description="Gradient norm per layer: watch for vanishing/exploding gradients.",
        examples=[EXAMPLE_METRICS["layer_grad_norms"]],
    )
    step_mode: str | None = Field(
        None,
        description="How the epoch's steps ran: eager, cuda_graph, or eager (fallback) when the "
        "CUDA-graph path was given up (null on epochs recorded before this was).",
        examples=["eager"],
    )
    step_mode_reason: str | None = Field(
        None, description="Why the steps ran eagerly, when they did.", examples=["not on CUDA"]
    )
    precision: str | None = Field(
        None,
        description="What the epoch's steps computed in (fp32, tf32, bf16), as observed.",
        examples=["fp32"],
    )


class JobRead(_Response):
    id: str = Field(description="Job id.", examples=[EXAMPLE_ID])
    name: str | None = Field(description="The job's label.", examples=["iris 4-8-8-3"])
    status: JobStatus = Field(description="Where the job is in its life.", examples=["running"])
    dataset_id: str | None = Field(description="The dataset it trains on.", examples=[EXAMPLE_ID])
    network: dict[str, Any] = Field(
        description="The network spec, defaults filled in.", examples=[IRIS_NETWORK]
    )
    training: dict[str, Any] = Field(
        description="The training config, defaults filled in.", examples=[IRIS_TRAINING]
    )
    epoch: int = Field(description="Epochs finished so far.", examples=[42])
    epochs: int = Field(description="Epochs asked for.", examples=[200])
    metrics: EpochMetrics | None = Field(
        None, description="The latest finished epoch's metrics.", examples=[EXAMPLE_METRICS]
    )
    model_id: str | None = Field(description="The trained model, once succeeded.", examples=[None])
    error: str | None = Field(
        description="Why it failed, in words you can act on.", examples=[None]
    )
    error_code: str | None = Field(description="Machine-readable failure code.", examples=[None])
    warning: str | None = Field(
        None,
        description=(
            "Set at submit when the validation figures would mislead: a classification job whose "
            "validation_split rows (the last rows of the dataset, as Keras takes them) hold a "
            "single class or miss classes present in training. The job still runs; null when "
            "nothing is wrong."
        ),
        examples=[None],
    )
    attempts: int = Field(description="Times a worker has claimed it.", examples=[1])
    device: str | None = Field(description="Where it trains (cpu, cuda:0).", examples=["cpu"])
    precision: str | None = Field(
        None,
        description="What its latest epoch's steps computed in (fp32, tf32, bf16), as observed, "
        "not as asked: the CPU trains in fp32. Null until an epoch ends.",
        examples=["fp32"],
    )
    step_mode: str | None = Field(
        None,
        description="How its latest epoch's steps ran: eager, cuda_graph (replayed from a CUDA "
        "graph), or eager (fallback) when the graph path was given up. Null until an epoch ends.",
        examples=["eager"],
    )
    step_mode_reason: str | None = Field(
        None,
        description="Why the steps ran eagerly, when they did (e.g. a capture failure).",
        examples=["not on CUDA"],
    )
    created_at: Timestamp = Field(description="Submitted at.", examples=[EXAMPLE_TIME])
    started_at: Timestamp | None = Field(description="First claimed at.", examples=[EXAMPLE_TIME])
    finished_at: Timestamp | None = Field(
        description="Reached a terminal state at.", examples=[None]
    )
    updated_at: Timestamp | None = Field(None, description="Last change.", examples=[EXAMPLE_TIME])


class JobList(BaseModel):
    items: list[JobRead] = Field(description="Your jobs, newest first.")


class MetricsRead(BaseModel):
    """One page of a job's epochs. Follow `next_after` (or the Link header's rel="next") until it
    is null to read them all; a running job's later epochs are read with after = the last
    epoch seen."""

    epochs: list[EpochMetrics] = Field(
        description="Finished epochs after `after`, in order, at most `limit` of them.",
        examples=[[EXAMPLE_METRICS]],
    )
    next_after: int | None = Field(
        description="The `after` of the next page when more epochs follow this page; null when "
        "this page holds the last epoch recorded so far.",
        examples=[None],
    )


# ------------------------------------------------------------------ models


class ModelRead(_Response):
    id: str = Field(description="Model id.", examples=[EXAMPLE_ID])
    job_id: str = Field(description="The job that trained it.", examples=[EXAMPLE_ID])
    dataset_id: str | None = Field(
        description="The dataset it was trained on.", examples=[EXAMPLE_ID]
    )
    task: Task = Field(description="classification or regression.", examples=["classification"])
    classes: list[str | int] | None = Field(
        description="Class labels; predictions are spelled like these.",
        examples=[["setosa", "versicolor", "virginica"]],
    )
    network: dict[str, Any] = Field(description="The network spec.", examples=[IRIS_NETWORK])
    training: dict[str, Any] = Field(description="The training config.", examples=[IRIS_TRAINING])
    summary: NetworkSummary = Field(
        description="Layers and parameter counts.",
        examples=[
            {
                "layers": IRIS_SUMMARY_LAYERS,
                "total_params": 139,
                "trainable_params": 139,
                "non_trainable_params": 0,
            }
        ],
    )
    metrics: EpochMetrics | None = Field(
        description="The final epoch's metrics.", examples=[EXAMPLE_METRICS]
    )
    standardization: dict[str, Any] | None = Field(
        None,
        description="Feature mean and std applied to inputs before the network (standardize=true); "
        "given by GET /v1/models/{id}, null in lists.",
        examples=[None],
    )
    input_dim: int = Field(description="Features each input row needs.", examples=[4])
    created_at: Timestamp = Field(description="Stored at.", examples=[EXAMPLE_TIME])


class ModelList(BaseModel):
    items: list[ModelRead] = Field(description="Your models, newest first.")


class KerasImport(BaseModel):
    network: dict[str, Any] = Field(
        description="The fitserve spec: post it as `network` to /v1/jobs.",
        examples=[IRIS_NETWORK],
    )
    summary: NetworkSummary = Field(
        description="Its layers and Keras' parameter counts.",
        examples=[_summary(_IRIS_NETWORK).model_dump()],
    )


class PredictRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": IRIS_ROWS}]})

    # a row may be empty: a document with no token ids is Keras' all-zero vector for a
    # category_encoding model; for a feature model it is a row of the wrong width (422)
    inputs: list[list[float]] = Field(
        min_length=1,
        description="Rows of features, each as long as the model's input_dim; for a model whose "
        "first layer is category_encoding, one list of token ids per document, of any length "
        "([] is an empty document).",
        examples=[IRIS_ROWS],
    )


class PredictResponse(BaseModel):
    outputs: list[list[float]] = Field(
        description="The final activation's values per row (probabilities for softmax/sigmoid).",
        examples=[[[0.98, 0.02, 0.0], [0.01, 0.96, 0.03], [0.0, 0.02, 0.98]]],
    )
    predictions: list[str | int] | None = Field(
        None,
        description="Classification: the predicted class label per row, as the dataset spelled it.",
        examples=[["setosa", "versicolor", "virginica"]],
    )


class ModelVersionRead(BaseModel):
    version: int = Field(description="1, 2, ... in registration order.", examples=[1])
    model_id: str = Field(description="The trained model.", examples=[EXAMPLE_MODEL_ID])
    created_at: datetime = Field(description="When it was registered.")


class RegisteredModelRead(BaseModel):
    name: str = Field(description="The model name.", examples=["iris"])
    versions: list[ModelVersionRead] = Field(description="Its versions, oldest first.")
    aliases: dict[str, int] = Field(
        description="Alias -> version; an unversioned name means its 'production' alias, else "
        "its latest version.",
        examples=[{"production": 1, "staging": 2}],
    )
    created_at: datetime = Field(description="When its first version was registered.")


class RegisteredModelList(BaseModel):
    items: list[RegisteredModelRead] = Field(description="Your model names, by name.")


class RegisterVersion(_Request):
    model_id: str = Field(
        pattern=r"^[0-9a-f]{32}$",
        description="A model of yours (a succeeded job's model_id).",
        examples=[EXAMPLE_MODEL_ID],
    )


class AliasMove(_Request):
    # lax: JSON Schema's integer includes 2.0, as JSON clients may write it
    version: int = Field(
        ge=1, le=2_000_000_000, strict=False, description="The version the alias points at."
    )


def sse_event_schema(events: list[str], data: str) -> dict[str, Any]:
    """One server-sent event as an EventSource parses it (the first may carry `retry`): the
    schema of a text/event-stream response's events."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "data": {"type": "string", "contentMediaType": "application/json", "description": data},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
