"""Parquet and Arrow IPC uploads, read from the spooled file (never a path) into a ParsedDataset.

A `list<integer>` column (list or large_list of any integer type) is a token-list dataset: its
Arrow offsets and values become the stored values + offsets as they are, never a dense matrix.
Without one, the numeric columns other than the target(s) are the feature matrix, as a CSV's are:
the schema is checked first (every feature a number), the cell cap from the footer's row count
before any column is decoded, then runs of row groups are read a column at a time, in batches
of BATCH_ROWS, into a `TableBuilder` (an Arrow file: each record batch, every column), so memory
holds float32 numbers and one column reader's buffers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.dataset_codec import ParsedDataset, build_dataset, check_name, token_lists
from app.errors import PayloadTooLarge, Unprocessable
from app.table_builder import TableBuilder, target_columns
from models.tokens import TokenLists

MAGIC = b"PAR1"  # a Parquet file starts and ends with it
ARROW_MAGIC = b"ARROW1"  # an Arrow IPC file (Feather v2) starts and ends with it
# Rows per batch and bytes per column stream's read buffer. Read across every column at once, a
# Parquet reader holds each column's buffers and decoded pages together: 42-49 MB of Arrow's pool
# for 20 columns whatever the rows, 234 MB for 400 columns x 20,000 rows; one column at a time it
# is 0.9-3 MB, and faster (0.29 s against 0.64 s for 900k rows x 21 columns; measured in-process).
BATCH_ROWS = 32_768
READ_BUFFER_BYTES = 1 << 16


def parse_parquet(
    file: pa.NativeFile | IO[bytes],
    *,
    target: str,
    task: str | None,
    max_bytes: int,
    max_cells: int | None = None,
    where: str = "file",
) -> ParsedDataset:
    """`target` names the target column(s), comma-separated; `max_bytes` bounds the table's
    uncompressed size and `max_cells` its rows x columns, both read from the footer before any
    column is decoded."""
    file.seek(0)
    try:
        # read as the batches need it, not a row group's column chunks buffered ahead
        parquet = pq.ParquetFile(file, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        meta = parquet.metadata
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise Unprocessable(
            f"{where} is not a readable Parquet file ({exc}); a file cut short loses the footer "
            "that Parquet reads first: upload it whole"
        ) from None
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{where} holds {size:,} bytes of uncompressed data; the limit is {max_bytes:,}: "
            "upload fewer rows"
        )
    names, targets, lists = _columns(schema, target, where=where)
    if meta.num_rows == 0:
        raise Unprocessable(f"{where} has no rows")
    if lists:
        return _token_dataset(_read_whole(parquet, where), targets, lists[0], task, where=where)
    table = _builder(names, targets, task, max_cells=max_cells, where=where)
    table.reserve(meta.num_rows)
    for groups, first, rows in _tiles(meta):
        for name in names:  # the tile's rows of x stay in the cache while its columns fill them
            row = first
            batches = parquet.iter_batches(
                batch_size=BATCH_ROWS, row_groups=groups, columns=[name], use_threads=False
            )
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as exc:
                    group, start = _damaged_group(parquet, name, groups, first)
                    raise Unprocessable(
                        f"{where}'s row group {group + 1} of {meta.num_row_groups} (from row "
                        f"{start}), column {name!r}, could not be read as Parquet ({exc})"
                    ) from None
                if batch is None:
                    break
                table.add_column(name, batch.column(0), row)
                row += batch.num_rows
            if row != first + rows:
                raise Unprocessable(
                    f"{where} column {name!r} holds {row - first:,} rows in row groups "
                    f"{groups[0] + 1}-{groups[-1] + 1} but the file's footer says {rows:,}: the "
                    "file is damaged; write it again"
                )
    return table.finish()


def _tiles(meta: pq.FileMetaData) -> Iterator[tuple[list[int], int, int]]:
    """Runs of consecutive row groups of at least BATCH_ROWS rows (a larger group alone), with
    each run's first row and its rows: a run is read a column at a time, and many small groups
    read together cost one reader per column, not one per group."""
    groups: list[int] = []
    first = rows = 0
    for group in range(meta.num_row_groups):
        groups.append(group)
        rows += meta.row_group(group).num_rows
        if rows >= BATCH_ROWS:
            yield groups, first, rows
            groups, first, rows = [], first + rows, 0
    if groups:
        yield groups, first, rows


def _damaged_group(
    parquet: pq.ParquetFile, name: str, groups: list[int], first: int
) -> tuple[int, int]:
    """The first of `groups` (a run from row `first`) whose column `name` can't be read, and its
    first row (a batch may span row groups, so the failed batch doesn't tell); only on that
    error's path."""
    row = first
    for group in groups:
        try:
            parquet.read_row_group(group, columns=[name], use_threads=False)
        except (pa.ArrowException, OSError):
            return group, row
        row += parquet.metadata.row_group(group).num_rows
    return groups[0], first


def parse_arrow_file(
    file: pa.NativeFile | IO[bytes],
    *,
    target: str,
    task: str | None,
    max_cells: int | None = None,
    where: str = "file",
) -> ParsedDataset:
    """An Arrow IPC file (Feather v2), record batch by record batch, numeric features only."""
    file.seek(0)
    try:
        reader = pa.ipc.open_file(file)
    except (pa.ArrowException, OSError) as exc:
        raise Unprocessable(f"{where} is not a readable Arrow IPC file ({exc})") from None
    names, targets, lists = _columns(reader.schema, target, where=where)
    if lists:
        raise Unprocessable(
            f"{where} has the list column {lists[0]!r}: token lists are taken as Parquet or JSON"
        )
    table = _builder(names, targets, task, max_cells=max_cells, where=where)
    for index in range(reader.num_record_batches):
        try:
            batch = reader.get_batch(index)
        except (pa.ArrowException, OSError) as exc:
            raise Unprocessable(
                f"{where}'s record batch {index + 1} of {reader.num_record_batches} (from row "
                f"{table.rows}) could not be read ({exc})"
            ) from None
        table.add(batch)
    if table.rows == 0:
        raise Unprocessable(f"{where} has no rows")
    return table.finish()


def _columns(
    schema: pa.Schema, target: str, *, where: str
) -> tuple[list[str], list[str], list[str]]:
    """Names, target names and list columns, every input column's type checked."""
    names = list(schema.names)
    for name in names:
        check_name(name, "column name")
    if len(set(names)) != len(names):
        raise Unprocessable(f"{where} repeats column names")
    targets = target_columns(target, names, container="table")
    inputs = [n for n in names if n not in targets]
    lists = [n for n in inputs if _is_list(schema.field(n).type)]
    if lists and len(inputs) != 1:
        raise Unprocessable(
            f"{where} has the list column {lists[0]!r} beside other input columns "
            f"({', '.join(n for n in inputs if n != lists[0])}); a token-list dataset is one "
            "list<int> column of token ids and the target column(s)"
        )
    for name in names if not lists else targets:
        kind = schema.field(name).type
        if name in targets and len(targets) == 1:
            kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            if not (_is_number(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise Unprocessable(
                    f"{where} column {name!r} holds {kind}; targets are labels (strings or "
                    "integers) or numbers"
                )
        elif not _is_number(kind):
            raise Unprocessable(
                f"{where} column {name!r} is {kind}; features must be numbers (or one "
                "list<int> column of token ids)"
            )
    return names, targets, lists


def _builder(
    names: list[str], targets: list[str], task: str | None, *, max_cells: int | None, where: str
) -> TableBuilder:
    return TableBuilder(
        names=names,
        targets=targets,
        task=task,
        max_cells=max_cells,
        where=where,
        row_label=lambda i: f"row {i}",
    )


def _is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind))


def _read_whole(parquet: pq.ParquetFile, where: str) -> pa.Table:
    try:
        return parquet.read()
    except (pa.ArrowException, OSError) as exc:
        raise Unprocessable(f"{where} could not be read as Parquet ({exc})") from None


def _first_null(column: pa.Array) -> int:
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _token_dataset(
    table: pa.Table, targets: list[str], name: str, task: str | None, *, where: str
) -> ParsedDataset:
    y = _targets(table, targets, where=where)
    tokens = _tokens(table.column(name), name, where=where)
    x = np.zeros((table.num_rows, 0), dtype=np.float64)
    return build_dataset(
        x=x, targets=y, task=task, feature_names=[name], target_names=targets,
        where=f"column {','.join(targets)!r}", tokens=tokens,
    )  # fmt: skip


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
    """A target column without nulls (`_targets` refused them) -> finite float64 numbers."""
    values = column.to_numpy().astype(np.float64)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise Unprocessable(f"{where} column {name!r}: row {row} is not a finite number")
    return values


def _targets(table: pa.Table, targets: list[str], *, where: str) -> list[object]:
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
