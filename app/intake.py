"""JSON dataset uploads: validated as `DatasetCreate` and turned into encoded arrays, a big one in a
helper process so that the API's event loop never waits for it.

Parsing JSON holds the GIL for the whole parse, whichever thread runs it (json, orjson and
pydantic alike: ~25-50 ms per MB), and so does building numpy arrays from the parsed lists. A
60 MB dataset parsed in a thread of the API stalled every other request — /health included — for
seconds. A body over FITSERVE_INTAKE_IN_PROCESS_BYTES (1 MiB) therefore goes to a helper process
(`python -m app.intake`): it validates the body, builds and encodes the arrays as an upload
parsed here would be (`services.datasets.parse_json`, `dataset_codec.encode_arrays`), and
answers with the row's columns and the encoded arrays, or with the error a parse here would have
raised. The API process only moves bytes through pipes (reads and writes release the GIL) and
stores the row. A helper serves one body and exits, so the memory a parse takes (Python lists of
floats: ~15x the body) goes back to the system at once; the next one is started as soon as one is
taken, so it has imported what it needs by the time a body arrives. At most `HELPERS` parse at
once; other big uploads wait their turn.

Frames from the helper: 4-byte big-endian length | JSON header | payload, where the header is
{"ok": true, "name", "columns": {...}, "features": n, "sha256"} and the payload the features'
safetensors bytes (n of them) followed by the targets', or {"ok": false, "error": {...}}
(`_error_header`).
Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
from typing import Any

import anyio.to_thread
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app import errors
from app.blobs import Blob
from app.dataset_codec import EncodedDataset, encode_arrays
from app.schemas import DatasetCreate
from app.services.datasets import describe, parse_json

# Helpers parsing at once: each holds ~15x its body in memory while it parses.
HELPERS = 2
# Added to a helper's niceness: where CPUs are short, the parse waits for the API, not the reverse.
HELPER_NICENESS = 10
# A helper still parsing after this long is killed (a 60 MB body takes a few seconds).
TIMEOUT_SECONDS = 300.0

_HEADER = struct.Struct(">I")
_slots = threading.BoundedSemaphore(HELPERS)
_spare_lock = threading.Lock()
_spare: subprocess.Popen[bytes] | None = None


def validate(raw: bytes) -> DatasetCreate:
    """The body as `DatasetCreate`, or the 422 FastAPI would answer (locations under "body")."""
    try:
        return DatasetCreate.model_validate_json(raw)
    except ValidationError as exc:
        found = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in found]) from None


Parsed = tuple[str, dict[str, Any], EncodedDataset]  # name, the row's columns, the arrays


def parse(raw: bytes) -> Parsed:
    """Validate, build and encode a JSON upload (the helper's work, or a small body's here)."""
    body = validate(raw)
    parsed = parse_json(body)
    return body.name, describe(parsed), encode_arrays(parsed)


async def parse_json_upload(chunks: list[bytes], *, in_process_bytes: int) -> Parsed:
    """`parse` of the body in `chunks`, off the event loop: in a thread for a body up to
    `in_process_bytes` (FITSERVE_INTAKE_IN_PROCESS_BYTES), in a helper process for a bigger one.
    Raises what `parse` raises."""
    if sum(len(chunk) for chunk in chunks) <= in_process_bytes:
        return await anyio.to_thread.run_sync(lambda: parse(b"".join(chunks)))
    return await anyio.to_thread.run_sync(_parse_in_helper, chunks)


# ------------------------------------------------------------------ the API's side


def _spawn() -> subprocess.Popen[bytes]:
    # stderr is the server's: a helper's traceback lands in its log
    helper = subprocess.Popen(
        [sys.executable, "-m", "app.intake"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    # Background work, its start-up (imports) included: where CPUs are short the API goes first.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, helper.pid, HELPER_NICENESS)
    return helper


def _take() -> subprocess.Popen[bytes]:
    """The warm helper if there is one (else a new one), and a new spare started behind it."""
    global _spare
    with _spare_lock:
        helper, _spare = _spare, None
        if helper is None or helper.poll() is not None:
            helper = _spawn()
        _spare = _spawn()
        return helper


def close() -> None:
    """End the spare helper (the app's shutdown)."""
    global _spare
    with _spare_lock:
        helper, _spare = _spare, None
    if helper is not None:
        helper.kill()
        helper.communicate()


def _parse_in_helper(chunks: list[bytes]) -> Parsed:
    with _slots:
        helper = _take()
        # The body goes in from a thread of its own while this one reads the answer: each side
        # blocks in a syscall with the GIL released, and nothing big is copied on the way.
        feeder = threading.Thread(target=_feed, args=(helper, chunks), daemon=True)
        feeder.start()
        timer = threading.Timer(TIMEOUT_SECONDS, helper.kill)
        timer.start()
        try:
            assert helper.stdout is not None
            head = helper.stdout.read(_HEADER.size)
            if len(head) < _HEADER.size:
                helper.wait()
                if not timer.is_alive():
                    raise errors.PayloadTooLarge(
                        f"parsing the dataset took longer than {TIMEOUT_SECONDS:.0f} s; upload it "
                        "in parts, or as a CSV or Parquet file"
                    )
                raise errors.ServiceUnavailable(
                    f"the process parsing the dataset ended with code {helper.returncode} before "
                    "answering (out of memory?); try again, or upload the data as a CSV or "
                    "Parquet file"
                )
            (length,) = _HEADER.unpack(head)
            header = json.loads(helper.stdout.read(length))
            if not header["ok"]:
                raise _rebuilt(header["error"])
            features = helper.stdout.read(header["features"])
            targets = helper.stdout.read()
        finally:
            timer.cancel()
            feeder.join()
            helper.stdout.close()  # type: ignore[union-attr]
            helper.wait()
    return (
        header["name"],
        header["columns"],
        EncodedDataset(Blob(features), targets, header["sha256"]),
    )


def _feed(helper: subprocess.Popen[bytes], chunks: list[bytes]) -> None:
    assert helper.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # the helper died: the reader reports it
        try:
            for chunk in chunks:
                helper.stdin.write(chunk)
        finally:
            helper.stdin.close()


def _rebuilt(error: dict[str, Any]) -> Exception:
    """The exception the helper reported, raised here as a parse here would have raised it."""
    if error["kind"] == "validation":
        return RequestValidationError(error["errors"])
    if error["kind"] == "fitserve":
        cls = getattr(errors, error["class"], None)
        if isinstance(cls, type) and issubclass(cls, errors.FitserveError):
            if issubclass(cls, errors.Unprocessable):
                return cls(error["message"], loc=tuple(error["loc"]), code=error["code"])
            return cls(error["message"], code=error["code"])
    if error["kind"] == "memory":
        return errors.PayloadTooLarge(
            "the dataset takes more memory to parse from JSON than the server can give it; "
            "upload it as a CSV or Parquet file, or in parts"
        )
    return RuntimeError(f"parsing the dataset failed in its helper process: {error['message']}")


# ------------------------------------------------------------------ the helper's side


def _error_header(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RequestValidationError):
        return {"kind": "validation", "errors": json.loads(json.dumps(exc.errors(), default=str))}
    if isinstance(exc, errors.FitserveError):
        return {
            "kind": "fitserve",
            "class": type(exc).__name__,
            "message": exc.message,
            "code": exc.code,
            "loc": list(getattr(exc, "loc", ())),
        }
    if isinstance(exc, MemoryError):
        return {"kind": "memory", "message": str(exc)}
    return {"kind": "crash", "message": f"{type(exc).__name__}: {exc}"}


def _frame(header: dict[str, Any]) -> bytes:
    head = json.dumps(header).encode()
    return _HEADER.pack(len(head)) + head


def main() -> None:
    """The helper: one body from stdin, one frame to stdout, exit. An empty stdin (the API
    stopped, or closed its spare) ends it without a word."""
    raw = sys.stdin.buffer.read()
    if not raw:
        return
    out = sys.stdout.buffer
    try:
        name, columns, encoded = parse(raw)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the API
        out.write(_frame({"ok": False, "error": _error_header(exc)}))
    else:
        header = {
            "ok": True,
            "name": name,
            "columns": columns,
            "features": len(encoded.features),
            "sha256": encoded.sha256,
        }
        out.write(_frame(header))
        for piece in encoded.features.pieces:
            out.write(piece)
        out.write(encoded.targets)
    out.flush()


if __name__ == "__main__":
    main()
