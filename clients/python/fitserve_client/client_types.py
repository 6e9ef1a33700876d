"""What the fitserve client returns and raises: typed results, the error tree, and the
server-sent-event parser. Import them from `fitserve_client`.

    FitserveError
    ├── ConnectionFailed     the server can't be reached (nothing listening, DNS, TLS)
    ├── WaitTimeout          wait() ran out of time; the job goes on
    ├── JobFailed            wait() saw the job end failed or cancelled (.job holds it)
    └── ApiError             any non-2xx answer
        ├── BadRequest (400), Unauthorized (401), Forbidden (403), NotFound (404),
        ├── Conflict (409), PayloadTooLarge (413), InvalidInput (422)
        └── ServerError (5xx)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


# --- errors -----------------------------------------------------------------------------------


class FitserveError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.detail = detail if detail is not None else message


class ConnectionFailed(FitserveError):
    pass


class WaitTimeout(FitserveError):
    pass


class JobFailed(FitserveError):
    def __init__(self, job: Job) -> None:
        reason = job.error or f"the job ended {job.status}"
        super().__init__(f"job {job.id} {job.status}: {reason}", code=job.error_code)
        self.job = job


class ApiError(FitserveError):
    pass


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class PayloadTooLarge(ApiError):
    pass


class InvalidInput(ApiError):
    pass


class ServerError(ApiError):
    pass


_ERROR_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
}


def _describe(detail: Any) -> str:
    """One readable line from a `detail`: a string, or FastAPI's list of field errors."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return json.dumps(detail)


def error_from_response(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and "detail" in body:
        detail, code = body["detail"], body.get("code")
    else:
        detail, code = (response.text.strip() or response.reason_phrase), None
    cls = _ERROR_BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else ApiError
    message = f"{response.status_code} {_describe(detail)}"
    return cls(message, status_code=response.status_code, code=code, detail=detail)


# --- typed results ----------------------------------------------------------------------------


class _Result(BaseModel):
    # Servers newer than this client may add fields: keep them instead of failing.
    model_config = ConfigDict(extra="allow")


class Dataset(_Result):
    id: str
    name: str
    task: str
    rows: int
    n_features: int
    feature_names: list[str] = []
    classes: list[Any] | None = None
    sha256: str | None = None
    created_at: datetime | None = None


class EpochMetrics(_Result):
    """One finished epoch, as the worker recorded it (Keras' history names)."""

    epoch: int
    loss: float | None = None
    accuracy: float | None = None
    mae: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_mae: float | None = None
    learning_rate: float | None = None
    seconds: float | None = None
    grad_norm: float | None = None
    layer_grad_norms: dict[str, float | None] | None = None


class Job(_Result):
    id: str
    status: str
    epoch: int = 0
    epochs: int | None = None
    name: str | None = None
    metrics: dict[str, Any] | None = None
    model_id: str | None = None
    error: str | None = None
    error_code: str | None = None
    warning: str | None = None
    attempts: int = 0
    device: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Trial(_Result):
    """One trial of a study: its sampled params and how it ended."""

    number: int
    job_id: str
    params: dict[str, Any]
    state: str
    value: float | None = None
    epochs_run: int = 0
    pruned_at_epoch: int | None = None
    model_id: str | None = None


class Study(_Result):
    id: str
    name: str
    status: str
    n_trials: int
    objective: dict[str, Any]
    trials: list[Trial] = []
    best_trial: Trial | None = None
    # the model name the best model is registered under when the study completes, and its version
    register_as: str | None = None
    registered_version: int | None = None

    @property
    def done(self) -> bool:
        return self.status in ("completed", "cancelled")


class Prediction(_Result):
    outputs: list[list[float]]
    predictions: list[Any] | None = None


class ModelInfo(_Result):
    id: str
    job_id: str | None = None
    dataset_id: str | None = None
    task: str | None = None
    network: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    classes: list[Any] | None = None
    metrics: dict[str, Any] | None = None
    standardization: dict[str, Any] | None = None
    input_dim: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Event:
    """One server-sent event: `event` is its type ("epoch", "status"), `data` its JSON payload."""

    event: str
    data: dict[str, Any]
    id: str | None = None


@dataclass
class EventParser:
    """Incremental text/event-stream parser (the WHATWG rules we need)."""

    event: str = ""
    data: list[str] = field(default_factory=list)
    id: str | None = None
    retry_ms: int | None = None

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self.data:
                self.event = ""
                return None
            raw, kind = "\n".join(self.data), self.event or "message"
            self.event, self.data = "", []
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"raw": raw}
            return Event(
                kind, payload if isinstance(payload, dict) else {"value": payload}, self.id
            )
        if line.startswith(":"):
            return None  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None
