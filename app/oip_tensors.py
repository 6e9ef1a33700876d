"""Open Inference Protocol V2 tensors: the datatypes, JSON data and the binary tensor data
extension, to and from numpy arrays. Pure numpy, no HTTP: app/services/oip.py uses it.

The binary extension (Triton's `binary_tensor_data`): a request or response body is a JSON header
of `Inference-Header-Content-Length` bytes followed by the raw tensors, each in the order the
header lists them, each `parameters.binary_data_size` bytes long. Numbers are little-endian in
row-major order; BOOL is one byte per value; BYTES is each value's length as a little-endian
uint32 followed by its bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# The OIP datatypes a feature tensor may use, as little-endian numpy dtypes.
NUMERIC: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "INT8": "i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "UINT8": "u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
DATATYPES = (*NUMERIC, "BYTES")
HEADER_LENGTH = "Inference-Header-Content-Length"


class TensorError(ValueError):
    """A tensor that can't be read; the message says what to send instead."""


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str  # "FP32" or "BYTES"
    shape: list[int]
    values: np.ndarray | list[str]  # FP32 array, or the labels as text


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary section) of a request body; all JSON without the header."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise TensorError(
            f"{HEADER_LENGTH} is {header_length!r}, but it must be the JSON header's length in "
            f"bytes, at most the body's {len(body)}"
        )
    return body[: int(text)], body[int(text) :]


def _count(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _flatten(data: Any) -> list[Any]:
    """Row-major values of JSON data given flat or nested as the shape."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _nested_as(data: Any, shape: list[int]) -> bool:
    """Whether nested lists have exactly `shape`."""
    if not shape:
        return not isinstance(data, list)
    if not isinstance(data, list) or len(data) != shape[0]:
        return False
    return all(_nested_as(item, shape[1:]) for item in data)


def _from_json(values: list[Any], datatype: str, where: str) -> np.ndarray:
    """The JSON values as float64, each checked against the datatype it was sent as."""
    dtype = NUMERIC[datatype]
    if datatype == "BOOL":
        bad = next((i for i, v in enumerate(values) if not isinstance(v, bool)), None)
        if bad is not None:
            raise TensorError(f"{where}.data[{bad}] is {values[bad]!r}; BOOL data is true/false")
        return np.asarray(values, dtype=np.float64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TensorError(
                    f"{where}.data[{i}] is {v!r}; {datatype} data must be whole numbers "
                    "(send FP32 for fractions)"
                )
            if not info.min <= v <= info.max:
                raise TensorError(
                    f"{where}.data[{i}] is {v}, which doesn't fit {datatype} "
                    f"({info.min}..{info.max}); send a wider datatype"
                )
        return np.asarray(values, dtype=np.float64)
    largest = float(np.finfo(dtype).max)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TensorError(f"{where}.data[{i}] is {v!r}; {datatype} data must be numbers")
        if abs(v) > largest:
            raise TensorError(
                f"{where}.data[{i}] is {v}, beyond {datatype}'s range "
                f"(|v| <= {largest:g}); send FP64, or scale the feature"
            )
    return np.asarray(values, dtype=np.float64)


def input_array(
    *, datatype: str, shape: list[int], data: Any, binary: bytes | None, where: str
) -> np.ndarray:
    """The tensor as a float64 array of its shape, from its JSON `data` or its `binary` bytes.
    `where` names the tensor in messages ("inputs[0]")."""
    if datatype == "BYTES":
        raise TensorError(
            f"{where} is BYTES; features are numbers: send FP32 (or another number type)"
        )
    if datatype not in NUMERIC:
        raise TensorError(
            f"{where}.datatype {datatype!r} is not an OIP datatype; "
            f"use one of {', '.join(DATATYPES)}"
        )
    count = _count(shape)
    if binary is not None:
        dtype = NUMERIC[datatype]
        if len(binary) != count * dtype.itemsize:
            raise TensorError(
                f"{where} has {len(binary)} bytes of binary data; shape {shape} as {datatype} "
                f"needs {count * dtype.itemsize}"
            )
        array = np.frombuffer(binary, dtype=dtype).astype(np.float64)
        if datatype in ("FP16", "FP32", "FP64") and not np.isfinite(array).all():
            bad = int(np.argmin(np.isfinite(array)))
            raise TensorError(f"{where} value {bad} is not a finite number (NaN or infinity)")
        return array.reshape(shape)
    if data is None:
        raise TensorError(
            f"{where} has neither data nor parameters.binary_data_size; send one of them"
        )
    if (
        isinstance(data, list)
        and data
        and isinstance(data[0], list)
        and not _nested_as(data, shape)
    ):
        raise TensorError(
            f"{where}.data is nested, but not in the shape {shape}; nest it as the shape says "
            "or send it flat"
        )
    values = _flatten(data)
    if len(values) != count:
        raise TensorError(f"{where}: shape {shape} needs {count} values, data has {len(values)}")
    return _from_json(values, datatype, where).reshape(shape)


def binary_sections(sizes: list[int | None], binary: bytes) -> list[bytes | None]:
    """The binary section cut into each tensor's bytes (None for a tensor sent as JSON)."""
    cuts: list[bytes | None] = []
    offset = 0
    for size in sizes:
        if size is None:
            cuts.append(None)
            continue
        cuts.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise TensorError(
            f"the binary section holds {len(binary)} bytes but the inputs' "
            f"parameters.binary_data_size add up to {offset}"
        )
    return cuts


def encode_bytes(values: list[str]) -> bytes:
    """BYTES tensor: each value's UTF-8 length as a little-endian uint32, then the bytes."""
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def output_json(output: Output, *, binary: bool) -> tuple[dict[str, Any], bytes]:
    """(the output's entry in the response, its binary bytes or b"")."""
    entry: dict[str, Any] = {
        "name": output.name,
        "datatype": output.datatype,
        "shape": output.shape,
    }
    if isinstance(output.values, np.ndarray):
        if binary:
            raw = np.ascontiguousarray(output.values, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            return entry, raw
        # float64 so each number prints as /v1 predict prints it (float(value))
        entry["data"] = np.asarray(output.values, dtype=np.float64).ravel().tolist()
        return entry, b""
    if binary:
        raw = encode_bytes(output.values)
        entry["parameters"] = {"binary_data_size": len(raw)}
        return entry, raw
    entry["data"] = list(output.values)
    return entry, b""
