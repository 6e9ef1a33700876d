"""Model use cases: read, list, weights download (prediction is app/services/predict.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, defer

import models
from app.errors import Conflict
from app.inference import ModelCache
from app.schemas import ModelList, ModelRead, NetworkSummary
from app.services import is_id, owned_by, predict, registry
from app.services.jobs import metrics_view
from app.tables import Job, JobCheckpoint, Model
from models.keras_export import to_keras_config
from models.onnx_export import to_onnx


def find_model(
    session: Session, *, owner: str | None, model_id: str, weights: bool = False
) -> Model | None:
    """The caller's model row, or None: another owner's model reads as absent. `model_id` may be
    a model name (`iris`, `iris@2`, `iris@staging`: app/services/registry.py), resolved here on
    every call; one that names nothing raises NotFound saying which name, version or alias is
    missing. The weights column is loaded only when asked for."""
    if not is_id(model_id):
        model_id, _ = registry.resolve(session, owner=owner, ref=model_id)
    query = select(Model).where(Model.id == model_id, owned_by(Model.owner_id, owner))
    if not weights:
        query = query.options(defer(Model.weights))
    return session.scalar(query)


def _get(session: Session, *, owner: str | None, model_id: str, weights: bool = False) -> Model:
    row = find_model(session, owner=owner, model_id=model_id, weights=weights)
    if row is None:
        raise predict.not_found(model_id)
    return row


def _view(row: Model, standardization: Any = None) -> ModelRead:
    network = models.NetworkSpec.model_validate(row.network)
    return ModelRead(
        id=row.id,
        job_id=row.job_id,
        dataset_id=row.dataset_id,
        task=row.task,  # type: ignore[arg-type]
        classes=row.classes,
        network=row.network,
        training=row.training,
        summary=NetworkSummary.model_validate(models.summary(network).model_dump()),
        metrics=metrics_view(_final_metrics(row)),
        standardization=standardization,
        input_dim=network.input_dim,
        created_at=row.created_at,
    )


class _MetricsRow:
    """Model.metrics (the final epoch's dict) shaped like a JobMetric for metrics_view."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.epoch = int(values.get("epoch", 0))
        # no step_mode/precision: what the steps ran as lives on the job's epoch rows, and
        # metrics_view reads those columns only where a row has them


def _final_metrics(row: Model) -> Any:
    return _MetricsRow(row.metrics) if row.metrics else None


def get_model(
    session: Session, *, owner: str | None, model_id: str, cache: predict.ModelCacheT
) -> ModelRead:
    row = _get(session, owner=owner, model_id=model_id)
    # the standardization lives in the weights: read from the loaded model (and so cached)
    served = predict.get_model(session, cache=cache, owner=owner, model_id=model_id)
    std = served.predictor.standardization
    standardization = None if std is None else {"mean": std.mean.tolist(), "std": std.std.tolist()}
    return _view(row, standardization)


def list_models(
    session: Session, *, owner: str | None, limit: int = 100, offset: int = 0
) -> ModelList:
    rows = session.scalars(
        select(Model)
        .options(defer(Model.weights))
        .where(owned_by(Model.owner_id, owner))
        .order_by(Model.created_at.desc(), Model.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return ModelList(items=[_view(r) for r in rows])


def get_weights(session: Session, *, owner: str | None, model_id: str) -> bytes:
    return bytes(_get(session, owner=owner, model_id=model_id, weights=True).weights)


def get_keras_config(session: Session, *, owner: str | None, model_id: str) -> dict[str, Any]:
    """The model's network as Keras Sequential JSON (what `model.to_json()` holds)."""
    row = _get(session, owner=owner, model_id=model_id)
    return to_keras_config(models.NetworkSpec.model_validate(row.network), name=f"m{row.id}")


def get_onnx(session: Session, *, owner: str | None, model_id: str) -> bytes:
    return to_onnx(get_weights(session, owner=owner, model_id=model_id))


def delete_model(session: Session, *, owner: str | None, model_id: str, cache: ModelCache) -> None:
    """A model with its weights, its job's checkpoint and its versions under any name. 409 while
    an alias points at it (move or remove the alias first)."""
    row = _get(session, owner=owner, model_id=model_id)
    pointing = registry.aliases_pointing_at(session, model_id=row.id)
    if pointing:
        raise Conflict(
            f"model {row.id} is what {', '.join(pointing)} points at; move or remove the "
            "alias first (PUT or DELETE /v1/registered-models/{name}/aliases/{alias})",
            code="model_aliased",
        )
    registry.delete_versions_of(session, model_id=row.id)
    session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == row.job_id))
    session.execute(update(Job).where(Job.id == row.job_id).values(model_id=None))
    session.execute(delete(Model).where(Model.id == row.id))
    cache.discard(row.id)
