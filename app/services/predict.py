"""Prediction: the one way every entry point gets a model and runs rows through it.

`/v1/models/{id}/predict` (JSON), `/predict.csv`, OIP `/v2/.../infer` and the dashboard all call
`get_model` (or `get_model_async`), which answers from the app's `ModelCache`: a hit makes no
query, a miss makes one (the row, its weights and its dataset's column names together) and keeps
the loaded `ServedModel`. A model row never changes once written, so a cached one stays right
until it is evicted. Class labels come from the outputs in one place, `ServedModel.labels`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

import models
from app.config import Settings
from app.errors import NotFound, PayloadTooLarge, Unprocessable
from app.inference import ModelCacheT, ServedModel
from app.prometheus import observe_prediction
from app.services import is_id, owned_by, registry
from app.tables import Dataset, Model
from models.tokens import TokenLists, as_tokens

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_ROW = re.compile(r"^row (\d+)")


def not_found(model_id: str) -> NotFound:
    return NotFound(
        f"model {model_id!r} not found; a succeeded job's model_id names one (GET /v1/jobs)"
    )


def _load(session: Session, *, owner: str | None, model_id: str) -> ServedModel:
    """The one query of a cache miss: the row, its weights and its dataset's column names."""
    found = session.execute(
        select(
            Model.owner_id,
            Model.task,
            Model.classes,
            Model.weights,
            Dataset.feature_names,
            Dataset.target_names,
        )
        .outerjoin(Dataset, Dataset.id == Model.dataset_id)
        .where(Model.id == model_id, owned_by(Model.owner_id, owner))
    ).one_or_none()
    if found is None:
        raise not_found(model_id)
    predictor = models.Predictor(bytes(found.weights))
    return ServedModel(
        id=model_id,
        owner_id=found.owner_id,
        task=found.task,
        classes=predictor.extra.get("classes", found.classes),
        feature_names=list(found.feature_names or []),
        target_names=list(found.target_names or []),
        predictor=predictor,
    )


def get_model(
    session: Session, *, cache: ModelCacheT, owner: str | None, model_id: str
) -> ServedModel:
    """The caller's model, from the cache or loaded into it (the session is used on a miss
    only). Another owner's model and a malformed id are a 404, as if absent. A model name
    (`iris`, `iris@2`, `iris@production`) is resolved to its model id first, on every call, so an
    alias move takes effect on the next request (the cache is keyed by id)."""
    if not is_id(model_id):
        model_id, _ = registry.resolve(session, owner=owner, ref=model_id)
    return _get(
        cache,
        owner=owner,
        model_id=model_id,
        load=lambda: _load(session, owner=owner, model_id=model_id),
    )


async def get_model_async(
    make_session: sessionmaker[Session], *, cache: ModelCacheT, owner: str | None, model_id: str
) -> ServedModel:
    """`get_model` for the event loop: a hit is answered inline (no query, no thread); a miss
    loads in the thread pool with a session of its own. (Were the model evicted between the
    check and the read, that one request would load it inline.)"""

    if not is_id(model_id):  # a model name: resolved in the thread pool (one query)
        model_id = await run_in_threadpool(_resolve_name, make_session, owner, model_id)

    def load() -> ServedModel:
        with make_session() as session:
            return _load(session, owner=owner, model_id=model_id)

    if model_id in cache:
        return _get(cache, owner=owner, model_id=model_id, load=load)
    return await run_in_threadpool(_get, cache, owner=owner, model_id=model_id, load=load)


def _resolve_name(make_session: sessionmaker[Session], owner: str | None, ref: str) -> str:
    with make_session() as session:
        return registry.resolve(session, owner=owner, ref=ref)[0]


def _get(
    cache: ModelCacheT, *, owner: str | None, model_id: str, load: Callable[[], ServedModel]
) -> ServedModel:
    if not is_id(model_id):
        raise not_found(model_id)
    model = cache.get(model_id, load)
    if model.owner_id != owner:
        raise not_found(model_id)
    return model


def check_rows(rows: int, settings: Settings) -> None:
    if rows > settings.max_predict_rows:
        raise PayloadTooLarge(
            f"{rows:,} input rows; the limit is {settings.max_predict_rows:,} per request "
            "(FITSERVE_MAX_PREDICT_ROWS): split the inputs, or use /predict.csv for batches"
        )


def as_matrix(rows: np.ndarray | list[list[float]], width: int) -> np.ndarray:
    """float64 (rows, width) from request rows; a row of the wrong width is a 422 naming it."""
    try:
        x = np.asarray(rows, dtype=np.float64)
    except ValueError:  # rows of different lengths
        x = np.empty((0, 0))
    if x.ndim != 2 or x.shape[1] != width:
        i, values = next((i, v) for i, v in enumerate(rows) if len(v) != width)
        raise Unprocessable(
            f"inputs[{i}] has {len(values)} values but the model takes {width} features per row",
            loc=("body", "inputs", i),
        )
    return x


def predict(
    model: ServedModel, rows: np.ndarray | list[list[float]]
) -> tuple[np.ndarray, list[Any] | None]:
    """(outputs float32 (rows, units), class labels or None): the rows checked against the
    model, run through it, and labelled. A model whose first layer is category_encoding takes
    each row as a document's token ids, of any length."""
    if model.predictor.takes_tokens:
        return run_tokens(model, token_rows(model, rows))
    x = as_matrix(rows, model.predictor.n_features)
    magnitude = np.abs(x)
    if magnitude.max(initial=0.0) > _FLOAT32_MAX:
        bad = int(np.argwhere(magnitude > _FLOAT32_MAX)[0][0])
        raise Unprocessable(
            f"inputs[{bad}] holds a value beyond float32's range (|v| > 3.4e38)",
            loc=("body", "inputs", bad),
        )
    with observe_prediction():  # the latency histogram on /metrics
        outputs = model.predictor.predict(x.astype(np.float32))
    if not np.isfinite(outputs).all():
        bad = int(np.argmin(np.isfinite(outputs).all(axis=1)))
        raise Unprocessable(
            f"the model's output for inputs[{bad}] is not a finite number; are the inputs far "
            "outside the range it was trained on?",
            loc=("body", "inputs", bad),
        )
    return outputs, model.labels(outputs)


def token_rows(
    model: ServedModel, rows: np.ndarray | list[list[float]], *, where: str = "inputs"
) -> TokenLists:
    """Request rows as documents of token ids, checked against the model's category_encoding
    layer: a non-integer or negative id, or one >= num_tokens, is a 422 naming the row."""
    try:
        return as_tokens(TokenLists.from_numbers(rows), model.predictor.network)
    except models.SpecError as exc:
        row = exc.loc[1] if len(exc.loc) > 1 else None
        message = _ROW.sub(f"{where}[\\1]", exc.message, count=1)
        raise Unprocessable(
            message, loc=("body", where, *([row] if row is not None else []))
        ) from None


def run_tokens(model: ServedModel, tokens: TokenLists) -> tuple[np.ndarray, list[Any] | None]:
    with observe_prediction():
        outputs = model.predictor.predict(tokens)
    return outputs, model.labels(outputs)


def encode_predictions(outputs: np.ndarray, predictions: list[Any] | None) -> bytes:
    """PredictResponse's JSON, {"outputs": [[...]], "predictions": [...] | null}, in one orjson
    call over the array. The float32 outputs are widened to float64 first so each number prints
    as `float(value)` does — the digits pydantic wrote before — not float32's shorter form."""
    body = {"outputs": np.ascontiguousarray(outputs, dtype=np.float64), "predictions": predictions}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
