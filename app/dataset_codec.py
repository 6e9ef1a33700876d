"""The dataset codec: the rules of a dataset whatever way it arrives (JSON arrays here; files
through app/uploads.py and app/table_builder.py, which call these), encode it for the database,
decode it for the worker. (The dataset use cases are app/services/datasets.py.)

Stored format (see app/tables.py): `features` is safetensors {"x": float32 (rows, n_features)},
or for a token-list (`sequences`) dataset {"values": int64 (tokens,), "offsets": int64 (rows + 1,)}
(models/tokens.py: never densified here, n_features is 0 and `tokens` counts the ids);
`targets` is safetensors {"y": int64 (rows,)} of class indices for classification, or
{"y": float32 (rows, n_outputs)} for regression. Class i is `classes[i]`; classes are the labels
as the dataset spelled them (integers stay integers), sorted (numerically when all labels are
numbers) so the same labels always get the same indices. `sha256` is over the features bytes
followed by the targets bytes, so equal data hashes equally.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load

from app.blobs import Blob
from app.errors import PayloadTooLarge, Unprocessable, shown
from app.schemas import MAX_NAME
from models import SpecError
from models.tokens import TokenLists, inputs_from_bytes, to_bytes

# An integer-valued target with at most this many distinct values is taken as class labels when
# the task isn't given; more distinct values read as a regression target (diabetes has 214).
MAX_INFERRED_CLASSES = 20
MAX_CLASSES = 10_000
# Integers beyond this lose digits in float64-based JSON clients (JavaScript).
MAX_INT_LABEL = 2**53

_INT_LABEL = re.compile(r"^[+-]?\d{1,18}$")
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what app.schemas' Name refuses


@dataclass(frozen=True)
class ParsedDataset:
    """Arrays and metadata ready to become a `Dataset` row."""

    task: str
    x: np.ndarray  # float32 (rows, n_features); (rows, 0) for a token-list dataset
    y: np.ndarray  # int64 (rows,) | float32 (rows, n_outputs)
    feature_names: list[str]
    target_names: list[str]
    classes: list[Any] | None
    tokens: TokenLists | None = None  # the documents of a `sequences` dataset

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "classification" else int(self.y.shape[1])


@dataclass(frozen=True)
class EncodedDataset:
    features: Blob  # the safetensors file, as its header and the array's buffer (app/blobs.py)
    targets: bytes
    sha256: str


def check_text(value: str, what: str) -> str:
    """Labels end up in the database and in JSON: no control characters or lone surrogates."""
    if _BAD_TEXT.search(value):
        raise Unprocessable(f"{what} {shown(value)} contains a control character; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unprocessable(f"{what} contains an invalid (lone surrogate) character") from None
    return value


def check_name(value: str, what: str) -> str:
    """A name (of a dataset, a column, a feature, a target): the rule of the JSON API's `Name`,
    whichever way it arrives (JSON, a CSV header, a form field, a Parquet schema): 1 to
    MAX_NAME characters, no control characters at all, valid Unicode."""
    if not 1 <= len(value) <= MAX_NAME:
        raise Unprocessable(
            f"{what} {shown(value)} has {len(value):,} characters; names take 1 to {MAX_NAME}"
        )
    if _CONTROL.search(value):
        raise Unprocessable(
            f"{what} {shown(value)} contains a control character (such as NUL, a tab or a "
            "newline); remove it"
        )
    return check_text(value, what)


# ------------------------------------------------------------------ encode / decode


def encode_arrays(parsed: ParsedDataset) -> EncodedDataset:
    features = (
        Blob(to_bytes(parsed.tokens))
        if parsed.tokens is not None
        else safetensors_file("x", parsed.x.astype(np.float32, copy=False))
    )
    y_dtype = np.int64 if parsed.task == "classification" else np.float32
    targets = bytes(safetensors_file("y", parsed.y.astype(y_dtype, copy=False)))
    digest = hashlib.sha256()
    features.update(digest)
    digest.update(targets)  # the same hash as over features + targets, without that copy
    return EncodedDataset(features, targets, digest.hexdigest())


_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def safetensors_file(name: str, array: np.ndarray) -> Blob:
    """`safetensors.numpy.save({name: array})`, byte for byte, for one float32 or int64 array,
    as its header and the array's own buffer (C order: copied only if it isn't already): the
    data isn't copied (safetensors builds the file in a buffer of its own and copies that into
    the bytes it returns, holding the GIL: 27-67 ms for 900k int64 targets at a load of 6-9).
    The array must not change while the blob is in use."""
    array = np.ascontiguousarray(array)
    header = json.dumps(
        {
            name: {
                "dtype": _DTYPES[array.dtype],
                "shape": list(array.shape),
                "data_offsets": [0, array.nbytes],
            }
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8-byte alignment
    data = array.reshape(-1).view(np.uint8) if array.size else b""
    return Blob(struct.pack("<Q", len(header)) + header, data)


def decode_arrays(row: Any) -> tuple[np.ndarray | TokenLists, np.ndarray]:
    """A `Dataset` row's arrays: x float32 (rows, n_features), or TokenLists for a sequences
    dataset; y int64 (rows,) or float32 (rows, n_outputs) — what `models.fit` takes."""
    x = inputs_from_bytes(row.features)
    y = st_load(bytes(row.targets))["y"]
    shape = (x.rows, 0) if isinstance(x, TokenLists) else x.shape
    if shape != (row.rows, row.n_features) or y.shape[0] != row.rows:
        raise ValueError(f"dataset {row.id} arrays do not match its row (corrupt or edited)")
    return x, y


# ------------------------------------------------------------------ targets -> task, classes


def _label_sort_key(labels: Sequence[Any]) -> Any:
    """Numbers (and text that spells numbers: "1.5", "10.0") sort by value, other text as text."""
    if all(isinstance(v, (int, float)) or is_number(v) for v in labels):
        # the text breaks ties between spellings of one value ("1" and "1.0"): a stable order
        return lambda v: (float(v), str(v))
    return str


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def infer_task(values: Sequence[Any]) -> str:
    """Text labels are classes; numbers with a fraction are a regression target; integers are
    classes when there are few distinct values (<= MAX_INFERRED_CLASSES)."""
    if any(isinstance(v, str) and not is_number(v) for v in values):
        return "classification"
    numbers = [float(v) for v in values]
    if any(not n.is_integer() for n in numbers):
        return "regression"
    return "classification" if len(set(numbers)) <= MAX_INFERRED_CLASSES else "regression"


def encode_classes(labels: Sequence[Any], *, where: str) -> tuple[np.ndarray, list[Any]]:
    """Labels -> (int64 class indices, sorted classes). CSV text labels that all spell integers
    become integers, so 0..9 sort as numbers, not as text."""
    if not labels:
        raise Unprocessable(f"{where} is empty; give one label per row")
    if all(isinstance(v, str) for v in labels) and all(_INT_LABEL.match(v) for v in labels):
        as_ints = [int(v) for v in labels]
        if all(abs(v) <= MAX_INT_LABEL for v in as_ints):
            labels = as_ints
    kinds = {type(v) for v in labels}
    if kinds == {float} or kinds == {int, float}:
        if not all(float(v).is_integer() for v in labels):  # int has no is_integer before 3.12
            raise Unprocessable(
                f"{where} holds fractional numbers, which can't be class labels: use "
                '"task": "regression", or give labels as strings or integers'
            )
        labels = [int(v) for v in labels]
    elif len(kinds) > 1:
        raise Unprocessable(
            f"{where} mixes label types ({', '.join(sorted(k.__name__ for k in kinds))}); "
            "give every label as a string, or every label as an integer"
        )
    if any(isinstance(v, int) and abs(v) > MAX_INT_LABEL for v in labels):
        raise Unprocessable(
            f"{where} holds an integer label beyond ±2**53, which JSON clients can't represent "
            "exactly; give such labels as strings"
        )
    classes = sorted(set(labels), key=_label_sort_key(labels))
    if len(classes) < 2:
        raise Unprocessable(
            f"{where} has a single class ({classes[0]!r}); classification needs at least 2 classes"
        )
    if len(classes) > MAX_CLASSES:
        raise Unprocessable(
            f"{where} has {len(classes)} distinct labels, over the limit of {MAX_CLASSES}; "
            'a target with that many values is probably a regression target ("task": "regression")'
        )
    for c in classes:
        if isinstance(c, str):
            check_text(c, "class label")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in labels], dtype=np.int64), classes


def _regression_targets(values: Sequence[Any], *, where: str) -> np.ndarray:
    rows = [v if isinstance(v, list) else [v] for v in values]
    width = len(rows[0]) if rows else 0
    if width == 0:
        raise Unprocessable(f"{where} rows are empty; give at least one target value per row")
    for i, r in enumerate(rows):
        if len(r) != width:
            raise Unprocessable(
                f"{where}[{i}] has {len(r)} values but {where}[0] has {width}; "
                "every row needs the same number of target values"
            )
        for v in r:
            if isinstance(v, str):
                raise Unprocessable(
                    f"{where}[{i}] is the text {v!r}; regression targets must be numbers "
                    '(for class labels use "task": "classification")'
                )
    return regression_array(np.asarray(rows, dtype=np.float64), where=where)


def regression_array(y: np.ndarray, *, where: str) -> np.ndarray:
    """float64 (rows, n_outputs) regression targets -> float32, naming the first row that is
    not a finite number or is past float32's range."""
    finite = np.isfinite(y)
    if not finite.all():
        bad = int(np.argwhere(~finite)[0][0])
        raise Unprocessable(f"{where}[{bad}] is not a finite number; remove NaN/Infinity values")
    if np.abs(y).max(initial=0.0) > np.finfo(np.float32).max:
        raise Unprocessable(f"{where} holds a value too large for float32 (|v| > 3.4e38)")
    return y.astype(np.float32)


def build_dataset(
    *,
    x: np.ndarray,
    targets: Sequence[Any],
    task: str | None,
    feature_names: list[str],
    target_names: list[str] | None,
    where: str = "targets",
    tokens: TokenLists | None = None,
) -> ParsedDataset:
    """Common path for JSON, CSV and Parquet uploads: x is already a finite 2-D float array
    ((rows, 0) beside the documents of a token-list dataset)."""
    rows = int(x.shape[0])
    if rows == 0:
        raise Unprocessable("the dataset has no rows; give at least one row of features")
    if len(targets) != rows:
        raise Unprocessable(
            f"{'sequences' if tokens is not None else 'features'} has {rows} rows but {where} "
            f"has {len(targets)}; give one target per row"
        )
    if np.abs(x).max(initial=0.0) > np.finfo(np.float32).max:
        raise Unprocessable("features hold a value too large for float32 (|v| > 3.4e38)")
    multi = any(isinstance(v, list) for v in targets)
    if task is None:
        task = "regression" if multi else infer_task(targets)
    if task == "classification":
        if multi:
            raise Unprocessable(
                f"{where} has several values per row; classification takes one label per row "
                '(use "task": "regression" for several numeric outputs)'
            )
        y, classes = encode_classes(list(targets), where=where)
    else:
        y, classes = _regression_targets(targets, where=where), None
    return finish_dataset(
        x=x,
        y=y,
        task=task,
        classes=classes,
        feature_names=feature_names,
        target_names=target_names,
        tokens=tokens,
    )


def finish_dataset(
    *,
    x: np.ndarray,
    y: np.ndarray,
    task: str,
    classes: list[Any] | None,
    feature_names: list[str],
    target_names: list[str] | None,
    tokens: TokenLists | None = None,
) -> ParsedDataset:
    """Encoded targets (int64 class indices, or float32 (rows, n_outputs)) beside finite
    features: the target names checked, x kept as float32 (no copy when it is already)."""
    n_outputs = 1 if task == "classification" else int(y.shape[1])
    if target_names is None:
        target_names = [f"target_{i}" for i in range(n_outputs)] if n_outputs > 1 else ["target"]
    elif len(target_names) != n_outputs:
        raise Unprocessable(
            f"target_names has {len(target_names)} names but the targets have {n_outputs} "
            "column(s); give one name per target column (or leave target_names out)"
        )
    for name in target_names:
        check_name(name, "target name")
    return ParsedDataset(
        task=task,
        x=x.astype(np.float32, copy=False),
        y=y,
        feature_names=feature_names,
        target_names=target_names,
        classes=classes,
        tokens=tokens,
    )


def sequences_tokens(sequences: Sequence[Sequence[int]], *, where: str = "sequences") -> TokenLists:
    """Validated JSON documents (lists of ints >= 0) -> values + offsets, without a dense copy."""
    if not sequences:
        raise Unprocessable(f"{where} is empty; give at least one document")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(offsets[-1]))
    return token_lists(values, offsets, where=where)


def token_lists(values: np.ndarray, offsets: np.ndarray, *, where: str) -> TokenLists:
    try:
        return TokenLists.from_arrays(values, offsets, loc=where)
    except SpecError as exc:
        raise Unprocessable.from_spec_error(exc, message=f"{where}: {exc.message}") from None


def features_array(features: Sequence[Sequence[float]], *, where: str = "features") -> np.ndarray:
    """JSON rows -> float64 (rows, n_features), naming the first ragged row."""
    if not features:
        raise Unprocessable(f"{where} is empty; give at least one row")
    width = len(features[0])
    if width == 0:
        raise Unprocessable(f"{where}[0] is empty; every row needs at least one feature")
    for i, row in enumerate(features):
        if len(row) != width:
            raise Unprocessable(
                f"{where}[{i}] has {len(row)} values but {where}[0] has {width}; "
                "every row needs the same number of features"
            )
    return np.asarray(features, dtype=np.float64)


def default_feature_names(n: int) -> list[str]:
    return [f"x{i}" for i in range(n)]


def check_feature_names(names: list[str], n_features: int) -> list[str]:
    if len(names) != n_features:
        raise Unprocessable(
            f"feature_names has {len(names)} names but the rows have {n_features} features; "
            "give one name per feature (or leave feature_names out)"
        )
    if len(set(names)) != len(names):
        raise Unprocessable("feature_names must be unique")
    return [check_name(n, "feature name") for n in names]


def too_many_cells(rows: int, columns: int, limit: int) -> PayloadTooLarge:
    """Refused while reading: the rows after `rows` were never read, so the total is unknown."""
    return PayloadTooLarge(
        f"the dataset holds more than {limit:,} values (its data row {rows:,} of {columns} "
        f"columns passes them); the limit is {limit:,} (FITSERVE_MAX_DATASET_CELLS): upload "
        "fewer rows or columns"
    )
