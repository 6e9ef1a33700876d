"""Model use cases: read, list, weights, predict (through the app's LRU of Predictors)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, defer

import models
from app.config import Settings
from app.errors import NotFound, PayloadTooLarge, Unprocessable
from app.inference import ModelCache, ModelFacts, encode_predictions
from app.metrics import observe_prediction
from app.schemas import ModelList, ModelRead, NetworkSummary, PredictRequest
from app.services import is_id, owned_by
from app.services.jobs import metrics_view
from app.tables import Model

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def find_model(
    session: Session, *, owner: str | None, model_id: str, weights: bool = False
) -> Model | None:
    """The caller's model row, or None: another owner's model and a malformed id read as absent.
    The weights column is loaded only when asked for."""
    if not is_id(model_id):
        return None
    query = select(Model).where(Model.id == model_id, owned_by(Model.owner_id, owner))
    if not weights:
        query = query.options(defer(Model.weights))
    return session.scalar(query)


def _get(session: Session, *, owner: str | None, model_id: str, weights: bool = False) -> Model:
    row = find_model(session, owner=owner, model_id=model_id, weights=weights)
    if row is None:
        raise NotFound(
            f"model {model_id!r} not found; a succeeded job's model_id names one (GET /v1/jobs)"
        )
    return row


def predictor(session: Session, *, cache: ModelCache, row: Model) -> models.Predictor:
    """The model's eval-mode Predictor, loaded from its weights on a cache miss."""

    def load() -> models.Predictor:
        weights = session.scalar(select(Model.weights).where(Model.id == row.id))
        assert weights is not None
        return models.Predictor(bytes(weights))

    return cache.get(row.id, load)


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


def _final_metrics(row: Model) -> Any:
    return _MetricsRow(row.metrics) if row.metrics else None


def get_model(
    session: Session, *, owner: str | None, model_id: str, cache: ModelCache
) -> ModelRead:
    row = _get(session, owner=owner, model_id=model_id)
    std = predictor(session, cache=cache, row=row).standardization
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


def predict_json(
    session: Session,
    *,
    owner: str | None,
    model_id: str,
    body: PredictRequest,
    settings: Settings,
    cache: ModelCache,
) -> bytes:
    """PredictResponse as JSON bytes, encoded from `predict_arrays`' arrays in one call."""
    outputs, predictions = predict_arrays(
        session, owner=owner, model_id=model_id, body=body, settings=settings, cache=cache
    )
    return encode_predictions(outputs, predictions)


def predict_arrays(
    session: Session,
    *,
    owner: str | None,
    model_id: str,
    body: PredictRequest,
    settings: Settings,
    cache: ModelCache,
) -> tuple[np.ndarray, list[Any] | None]:
    """(outputs float32 (rows, units), class labels or None) for the request's rows."""
    check_rows(body, settings)
    cached = cached_model(cache, owner=owner, model_id=model_id)
    if cached is None:
        row = _get(session, owner=owner, model_id=model_id)
        model = predictor(session, cache=cache, row=row)
        facts = ModelFacts(owner_id=row.owner_id, task=row.task, classes=row.classes)
        cache.remember(row.id, facts)
        cached = model, facts
    return run_prediction(*cached, body)


def cached_model(
    cache: ModelCache, *, owner: str | None, model_id: str
) -> tuple[models.Predictor, ModelFacts] | None:
    """The caller's model from the cache, or None (not cached, or not the caller's: the caller
    then goes through `_get`, which answers 404 for another owner's model). A model row never
    changes once written, so a hit needs no query at all."""
    cached = cache.lookup(model_id)
    if cached is None or cached[1].owner_id != owner:
        return None
    return cached  # type: ignore[no-any-return]


def check_rows(body: PredictRequest, settings: Settings) -> None:
    rows = len(body.inputs)
    if rows > settings.max_predict_rows:
        raise PayloadTooLarge(
            f"{rows:,} input rows; the limit is {settings.max_predict_rows:,} per request "
            "(FITSERVE_MAX_PREDICT_ROWS): split the inputs, or use /predict.csv for batches"
        )


def run_prediction(
    model: models.Predictor, facts: ModelFacts, body: PredictRequest
) -> tuple[np.ndarray, list[Any] | None]:
    """The rows checked against the model, run through it, and labelled."""
    width = model.n_features
    try:
        x = np.asarray(body.inputs, dtype=np.float64)
    except ValueError:  # rows of different lengths
        x = np.empty((0, 0))
    if x.ndim != 2 or x.shape[1] != width:
        i, values = next((i, v) for i, v in enumerate(body.inputs) if len(v) != width)
        raise Unprocessable(
            f"inputs[{i}] has {len(values)} values but the model takes {width} features per row",
            loc=("body", "inputs", i),
        )
    if np.abs(x).max(initial=0.0) > _FLOAT32_MAX:
        bad = int(np.argwhere(np.abs(x) > _FLOAT32_MAX)[0][0])
        raise Unprocessable(
            f"inputs[{bad}] holds a value beyond float32's range (|v| > 3.4e38)",
            loc=("body", "inputs", bad),
        )
    with observe_prediction():  # the latency histogram on /metrics
        outputs = model.predict(x.astype(np.float32))
    if not np.isfinite(outputs).all():
        bad = int(np.argmin(np.isfinite(outputs).all(axis=1)))
        raise Unprocessable(
            f"the model's output for inputs[{bad}] is not a finite number; are the inputs far "
            "outside the range it was trained on?",
            loc=("body", "inputs", bad),
        )
    predictions = None
    if facts.task == "classification" and facts.classes:
        predictions = _labels(outputs, list(facts.classes))
    return outputs, predictions


def _labels(outputs: np.ndarray, classes: list[Any]) -> list[Any]:
    if outputs.shape[1] == 1:
        # One sigmoid unit: the probability of class 1, as Keras' binary accuracy thresholds it.
        index = (outputs[:, 0] >= 0.5).astype(np.int64)
    else:
        index = outputs.argmax(axis=1)
    labels = np.empty(len(classes), dtype=object)  # keeps each label's own type (str or int)
    labels[:] = classes
    return labels[index].tolist()  # type: ignore[no-any-return]
