"""Parquet uploads: a table read from memory (never a path) into a ParsedDataset.

A `list<integer>` column (list or large_list of any integer type) is a token-list dataset: its
Arrow offsets and values become the stored values + offsets as they are, never a dense matrix.
Without one, the numeric columns other than the target(s) are the feature matrix, as a CSV's are.
The target column(s) are read like a CSV's: labels for classification, numbers for regression.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.dataset_codec import ParsedDataset, build_dataset, check_name, token_lists
from app.errors import PayloadTooLarge, Unprocessable
from models.tokens import TokenLists

MAGIC = b"PAR1"  # a Parquet file starts and ends with it


def is_parquet(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == MAGIC and data[-4:] == MAGIC


def parse_parquet(
    data: bytes, *, target: str, task: str | None, max_bytes: int, where: str = "file"
) -> ParsedDataset:
    """`target` names the target column(s), comma-separated; `max_bytes` bounds the table's
    uncompressed size (read from the footer before any column is decoded)."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        meta = parquet.metadata
    except (pa.ArrowException, OSError) as exc:
        raise Unprocessable(f"{where} is not a readable Parquet file ({exc})") from None
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{where} holds {size:,} bytes of uncompressed data; the limit is {max_bytes:,}: "
            "upload fewer rows"
        )
    try:
        table = parquet.read()
    except (pa.ArrowException, OSError) as exc:
        raise Unprocessable(f"{where} could not be read as Parquet ({exc})") from None
    names = table.column_names
    for name in names:
        check_name(name, "column name")
    if len(set(names)) != len(names):
        raise Unprocessable(f"{where} repeats column names")
    targets = [t.strip() for t in target.split(",") if t.strip()]
    missing = [t for t in targets if t not in names]
    if not targets or missing:
        raise Unprocessable(
            f"target column {(missing or [''])[0]!r} is not in the table; its columns are: "
            + ", ".join(names)
        )
    inputs = [n for n in names if n not in targets]
    lists = [n for n in inputs if _is_list(table.schema.field(n).type)]
    if table.num_rows == 0:
        raise Unprocessable(f"{where} has no rows")
    y = _targets(table, targets, task, where=where)
    if lists:
        if len(inputs) != 1:
            raise Unprocessable(
                f"{where} has the list column {lists[0]!r} beside other input columns "
                f"({', '.join(n for n in inputs if n != lists[0])}); a token-list dataset is one "
                "list<int> column of token ids and the target column(s)"
            )
        tokens = _tokens(table.column(lists[0]), lists[0], where=where)
        x = np.zeros((table.num_rows, 0), dtype=np.float64)
        return build_dataset(
            x=x, targets=y, task=task, feature_names=[lists[0]], target_names=targets,
            where=f"column {target!r}", tokens=tokens,
        )  # fmt: skip
    if not inputs:
        raise Unprocessable("every column is a target; leave at least one feature column")
    x = np.column_stack([_numbers(table.column(n), n, where=where) for n in inputs])
    return build_dataset(
        x=x, targets=y, task=task, feature_names=inputs, target_names=targets,
        where=f"column {target!r}",
    )  # fmt: skip


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind))


def _first_null(column: pa.Array) -> int:
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _tokens(column: pa.ChunkedArray, name: str, *, where: str) -> TokenLists:
    arr = column.combine_chunks()
    if not pa.types.is_integer(arr.type.value_type):
        raise Unprocessable(
            f"{where} column {name!r} holds lists of {arr.type.value_type}; token ids are "
            "integers (list<int64> or any integer type)"
        )
    if arr.null_count:
        raise Unprocessable(f"{where} column {name!r}: row {_first_null(arr)} is null; give [] "
                            "for an empty document")  # fmt: skip
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets -= offsets[0]
    if values.null_count:
        at = _first_null(values)
        row = int(np.searchsorted(offsets, at, side="right")) - 1
        raise Unprocessable(f"{where} column {name!r}: row {row} holds a null token id")
    if pa.types.is_uint64(values.type) and len(values) and int(pc.max(values).as_py()) >= 2**63:
        raise Unprocessable(f"{where} column {name!r}: token ids must be below 2**63")
    return token_lists(values.to_numpy().astype(np.int64), offsets, where=f"column {name!r}")


def _numbers(column: pa.ChunkedArray, name: str, *, where: str) -> np.ndarray:
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise Unprocessable(
            f"{where} column {name!r} is {kind}; features must be numbers (or one list<int> "
            "column of token ids)"
        )
    if column.null_count:
        raise Unprocessable(f"{where} column {name!r}: row {_first_null(column)} is null")
    values = column.to_numpy().astype(np.float64)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise Unprocessable(f"{where} column {name!r}: row {row} is not a finite number")
    return values


def _targets(table: pa.Table, targets: list[str], task: str | None, *, where: str) -> list[object]:
    columns = [table.column(t) for t in targets]
    for name, column in zip(targets, columns, strict=True):
        if column.null_count:
            raise Unprocessable(f"{where} column {name!r}: row {_first_null(column)} is null")
    if len(columns) > 1:
        return np.column_stack(
            [_numbers(c, n, where=where) for n, c in zip(targets, columns, strict=True)]
        ).tolist()
    values = columns[0].to_pylist()
    if any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in values):
        raise Unprocessable(
            f"{where} column {targets[0]!r} holds {columns[0].type}; targets are labels (strings "
            "or integers) or numbers"
        )
    return values
