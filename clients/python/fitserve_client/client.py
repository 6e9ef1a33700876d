"""The Python client for a fitserve server, on httpx.

    from fitserve_client import FitserveClient

    with FitserveClient("http://127.0.0.1:8000") as fs:
        job = fs.submit(network, "iris", {"loss": "sparse_categorical_crossentropy", "epochs": 50})
        job = fs.wait(job.id, on_epoch=lambda m: print(m.epoch, m.loss))
        print(fs.predict(job.model_id, [[5.1, 3.5, 1.4, 0.2]]).predictions)

Errors the server reports are raised as `FitserveError` subclasses that carry its message
(`detail`), machine-readable `code` and HTTP status; the tree is drawn in client_types.py.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from fitserve_client.client_types import (
    TERMINAL_STATUSES,
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Dataset,
    EpochMetrics,
    Event,
    EventParser,
    FitserveError,
    Forbidden,
    InvalidInput,
    Job,
    JobFailed,
    ModelInfo,
    NotFound,
    PayloadTooLarge,
    Prediction,
    ServerError,
    Study,
    Trial,
    Unauthorized,
    WaitTimeout,
    error_from_response,
)

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "EpochMetrics",
    "Event",
    "FitserveClient",
    "FitserveError",
    "Forbidden",
    "InvalidInput",
    "Job",
    "JobFailed",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "ServerError",
    "Study",
    "Trial",
    "Unauthorized",
    "WaitTimeout",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
# Epochs asked for per page of GET /v1/jobs/{id}/metrics (the server allows up to 5,000).
METRICS_PAGE = 1000

# --- the client -------------------------------------------------------------------------------

PathOrFile = str | os.PathLike[str] | IO[bytes]


class FitserveClient:
    """A session with one fitserve server. Use as a context manager, or call close()."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("FITSERVE_SERVER") or DEFAULT_SERVER).rstrip(
            "/"
        )
        api_key = api_key if api_key is not None else os.environ.get("FITSERVE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> FitserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing --

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        _raise_for_error(response)
        return response

    def _unreachable(self, exc: Exception) -> ConnectionFailed:
        return ConnectionFailed(
            f"cannot reach the fitserve server at {self.base_url} ({exc}); start one with "
            "`fitserve serve`, or point --server / FITSERVE_SERVER at it"
        )

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._request(method, url, **kwargs).json()

    # -- health, networks --

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def summary(self, network: Mapping[str, Any]) -> dict[str, Any]:
        """Keras' model.summary() for a network spec, without training anything."""
        return self._json("POST", "/v1/networks/summary", json=dict(network))

    # -- datasets --

    def upload_dataset(
        self,
        data: PathOrFile | Any,
        targets: Any = None,
        *,
        name: str | None = None,
        target: str | Sequence[str] | None = None,
        task: str | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> Dataset:
        """Upload a CSV file — or a gzip'd CSV, Parquet or Arrow IPC file — (a path or a binary
        file, with `target` naming its target column or columns) or arrays (`data` = features,
        rows of numbers, with `targets` beside them)."""
        if targets is None:
            return self._upload_csv(data, name=name, target=target, task=task)
        if target is not None:
            raise ValueError("pass either a CSV with target=COLUMN, or features with targets")
        features = _as_rows(data)
        body: dict[str, Any] = {
            "name": name or "dataset",
            "features": features,
            "targets": _as_list(targets),
        }
        if task is not None:
            body["task"] = task
        if feature_names is not None:
            body["feature_names"] = list(feature_names)
        return Dataset.model_validate(self._json("POST", "/v1/datasets", json=body))

    def _upload_csv(
        self,
        source: PathOrFile,
        *,
        name: str | None,
        target: str | Sequence[str] | None,
        task: str | None,
    ) -> Dataset:
        if target is None:
            raise ValueError("a CSV upload needs target=COLUMN (the column to predict)")
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            content: bytes = path.read_bytes()
            filename, default_name = path.name, path.stem
        else:
            content = source.read()
            # no extension: the server reads the format (CSV, gzip, Parquet, Arrow) from the bytes
            filename, default_name = "data", "dataset"
        form = {
            "target": target if isinstance(target, str) else ",".join(target),
            "name": name or default_name,
        }
        if task is not None:
            form["task"] = task
        files = {"file": (filename, content)}  # the type guessed from the name, if it says
        return Dataset.model_validate(self._json("POST", "/v1/datasets", data=form, files=files))

    def list_datasets(self) -> list[Dataset]:
        items = self._json("GET", "/v1/datasets")["items"]
        return [Dataset.model_validate(item) for item in items]

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._json("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # -- jobs --

    def submit(
        self,
        network: Mapping[str, Any],
        dataset: str,
        training: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        epochs: int | None = None,
        register_as: str | None = None,
    ) -> Job:
        """Queue a training job; `dataset` is an id or a built-in name such as "iris".
        `register_as`: the model name its model becomes the next version of when it succeeds."""
        config = dict(training or {})
        if epochs is not None:
            config["epochs"] = epochs
        body: dict[str, Any] = {"network": dict(network), "dataset": dataset, "training": config}
        if name is not None:
            body["name"] = name
        if register_as is not None:
            body["register_as"] = register_as
        return Job.model_validate(self._json("POST", "/v1/jobs", json=body))

    # -- studies --

    def create_study(self, study: Mapping[str, Any]) -> Study:
        """Start a hyperparameter search: `study` is POST /v1/studies' body (name, dataset,
        network, training, search_space, objective, n_trials, ...)."""
        return Study.model_validate(self._json("POST", "/v1/studies", json=dict(study)))

    def get_study(self, study_id: str) -> Study:
        return Study.model_validate(self._json("GET", f"/v1/studies/{study_id}"))

    def list_studies(self) -> list[Study]:
        return [Study.model_validate(s) for s in self._json("GET", "/v1/studies")["items"]]

    def cancel_study(self, study_id: str) -> Study:
        return Study.model_validate(self._json("POST", f"/v1/studies/{study_id}/cancel"))

    def run_study(
        self,
        study: Mapping[str, Any],
        *,
        on_update: Callable[[Study], object] | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> Study:
        """Create a study and wait for it to end, calling `on_update` whenever a trial's state,
        value or epoch count changed. Returns the ended study (`best_trial` holds the winner)."""
        current = self.create_study(study)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            shown = [(t.state, t.value, t.epochs_run) for t in current.trials]
            if on_update is not None and shown != seen:
                on_update(current)
                seen = shown
            if current.done:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"study {current.id} still running after {timeout:g} s")
            time.sleep(poll_seconds)
            current = self.get_study(current.id)

    # -- model names (versions and aliases) --

    def list_names(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/registered-models")["items"])

    def get_name(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/registered-models/{name}"))

    def register_model(self, name: str, model_id: str) -> dict[str, Any]:
        """The model as the name's next version: {"version", "model_id", "created_at"}."""
        url = f"/v1/registered-models/{name}/versions"
        return dict(self._json("POST", url, json={"model_id": model_id}))

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        url = f"/v1/registered-models/{name}/aliases/{alias}"
        return dict(self._json("PUT", url, json={"version": version}))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove the alias (the plain name then serves its production alias, else its latest)."""
        self._request("DELETE", f"/v1/registered-models/{name}/aliases/{alias}")

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, status: str | None = None) -> list[Job]:
        params = {"status": status} if status else None
        items = self._json("GET", "/v1/jobs", params=params)["items"]
        return [Job.model_validate(item) for item in items]

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def metrics(self, job_id: str, *, after: int = 0) -> list[EpochMetrics]:
        """Every recorded epoch after `after` (0: all of them), following the server's pages
        (`next_after`) to the last."""
        rows: list[EpochMetrics] = []
        cursor: int | None = after
        while cursor is not None:
            params = {"after": cursor, "limit": METRICS_PAGE}
            page = self._json("GET", f"/v1/jobs/{job_id}/metrics", params=params)
            rows += [EpochMetrics.model_validate(row) for row in page["epochs"]]
            cursor = page.get("next_after")
        return rows

    def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        max_reconnects: int = 5,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """The job's live event stream until its terminal status event. A dropped connection is
        resumed with Last-Event-ID, so no epoch is lost or repeated. `timeout` bounds the whole
        stream (WaitTimeout); the job itself goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def expired() -> bool:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} still running after {timeout:g} s")
            return False

        failures = 0
        while not expired():
            # Keep-alive comments arrive every 15 s while a job is quiet, well inside 90 s; a
            # deadline closer than that bounds the read instead.
            read = 90.0 if deadline is None else min(90.0, max(0.05, deadline - time.monotonic()))
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            parser = EventParser()
            try:
                stream_timeout = httpx.Timeout(self._http.timeout.connect, read=read)
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=stream_timeout
                ) as response:
                    _raise_for_error(response)
                    for line in response.iter_lines():
                        expired()
                        event = parser.feed(line)
                        if event is None:
                            continue
                        failures = 0
                        if event.id is not None:
                            last_event_id = event.id
                        yield event
                        if event.event == "status" and event.data.get("status") in (
                            TERMINAL_STATUSES
                        ):
                            return
            except httpx.ReadTimeout as exc:
                if not expired():
                    failures += 1
                    if failures > max_reconnects:
                        raise self._unreachable(exc) from exc
            except httpx.TransportError as exc:
                failures += 1
                if failures > max_reconnects:
                    raise self._unreachable(exc) from exc
            # The stream ended without a terminal event (server restart): resume where we were.
            time.sleep((parser.retry_ms or 1000) / 1000 * min(failures, 3) or 0.2)

    def wait(
        self,
        job_id: str,
        *,
        on_epoch: Callable[[EpochMetrics], object] | None = None,
        on_status: Callable[[dict[str, Any]], object] | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Follow the job's event stream until it ends; `on_epoch` sees each epoch exactly once.
        Returns the finished job; raises JobFailed if it failed or was cancelled (unless
        raise_on_failure=False) and WaitTimeout after `timeout` seconds."""
        for event in self.events(job_id, timeout=timeout):
            if event.event == "epoch" and on_epoch is not None:
                on_epoch(EpochMetrics.model_validate(event.data))
            elif event.event == "status" and on_status is not None:
                on_status(event.data)
        job = self.get_job(job_id)
        if raise_on_failure and job.status != "succeeded":
            raise JobFailed(job)
        return job

    # -- models --

    def get_model(self, model_id: str) -> ModelInfo:
        return ModelInfo.model_validate(self._json("GET", f"/v1/models/{model_id}"))

    def download_weights(self, model_id: str, path: str | os.PathLike[str] | None = None) -> bytes:
        """The trained weights as safetensors bytes (written to `path` too when given)."""
        content = self._request("GET", f"/v1/models/{model_id}/weights").content
        if path is not None:
            Path(path).write_bytes(content)
        return content

    def predict(self, model_id: str, inputs: Any) -> Prediction:
        body = {"inputs": _as_rows(inputs)}
        return Prediction.model_validate(
            self._json("POST", f"/v1/models/{model_id}/predict", json=body)
        )

    def predict_csv(
        self, model_id: str, source: PathOrFile | bytes, out: IO[bytes] | None = None
    ) -> bytes:
        """Batch prediction: a CSV with the dataset's feature columns in, a CSV of outputs back,
        streamed into `out` as it arrives (and returned when `out` is None)."""
        if isinstance(source, bytes):
            content = source
        elif isinstance(source, str | os.PathLike):
            content = Path(source).read_bytes()
        else:
            content = source.read()
        sink = out if out is not None else io.BytesIO()
        headers = {"Content-Type": "text/csv"}
        try:
            with self._http.stream(
                "POST", f"/v1/models/{model_id}/predict.csv", content=content, headers=headers
            ) as response:
                _raise_for_error(response)
                for chunk in response.iter_bytes():
                    sink.write(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return sink.getvalue() if isinstance(sink, io.BytesIO) else b""


def _raise_for_error(response: httpx.Response) -> None:
    """The server's error as a FitserveError; a streamed body is read first (httpx reads it only
    on demand, and the error's message is in it)."""
    if response.is_error:
        response.read()
        raise error_from_response(response)


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _as_rows(values: Any) -> list[list[Any]]:
    rows = _as_list(values)
    return [_as_list(row) for row in rows]
