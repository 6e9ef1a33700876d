"""Blocks of a table — CSV blocks, Parquet row groups, Arrow record batches — into a ParsedDataset.

The rules every tabular upload follows, whatever its format: column names (`check_name`, none
empty, none repeated), the target column(s), features as finite numbers, class labels. Each block
is converted as it arrives: its features become a float32 (rows, n_features) array (float64 only
while the block is checked), its labels stay Arrow strings or numbers until the end, where the
distinct labels alone decide the task and the classes by the JSON path's rules
(`dataset_codec.infer_task`, `dataset_codec.encode_classes`). The cell cap is checked per block,
so a table past it is refused at the first block that passes it, the rest never read.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.dataset_codec import (
    ParsedDataset,
    check_name,
    encode_classes,
    finish_dataset,
    infer_task,
    regression_array,
    too_many_cells,
)
from app.errors import Unprocessable, shown

FLOAT32_MAX = float(np.finfo(np.float32).max)
# A scalar made once: given "", pc.equal makes one per call, and tries to import dateutil each
# time (0.18 ms against 0.013 per block, measured).
_EMPTY = pa.scalar("")


def check_header(names: list[str], *, where: str) -> None:
    """A header's names: NUL first (a binary file, not a CSV), then the name rule, then
    empty and repeated names."""
    if any("\x00" in name for name in names):
        raise Unprocessable(f"{where} contains NUL bytes; is it really a CSV file?")
    for name in names:
        check_name(name, "column name")
    if any(not name for name in names):
        raise Unprocessable(f"{where}'s header row has an empty column name; name every column")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise Unprocessable(f"{where}'s header repeats column names: {', '.join(dupes)}")


def target_columns(target: str, names: list[str], *, container: str = "header") -> list[str]:
    """The comma-separated `target` field -> the target column names, each in `names`."""
    targets = [t.strip() for t in target.split(",") if t.strip()]
    if not targets:
        raise Unprocessable("target is empty; give the name of the target column")
    missing = [t for t in targets if t not in names]
    if missing:
        raise Unprocessable(
            f"target column {missing[0]!r} is not in the {container}; the columns are: "
            + ", ".join(names)
        )
    if len(set(targets)) != len(targets):
        raise Unprocessable("target names a column twice")
    if len(targets) == len(names):
        raise Unprocessable("every column is a target; leave at least one feature column")
    return targets


class TableBuilder:
    """Collects a table's blocks: record batches with every column (`add`, a CSV's blocks), or,
    when the row count is known first (`reserve`, a Parquet footer's), one column's rows at a
    time (`add_column`).

    `row_label(i)` names the table's row i (0-based) in messages the way the format counts
    ("data row 1" under a CSV header, "row 0" of a Parquet file); `numeric_targets` reads the
    target(s) as numbers (a regression target given as such, or several targets) rather than
    labels.
    """

    def __init__(
        self,
        *,
        names: list[str],
        targets: list[str],
        task: str | None,
        max_cells: int | None,
        where: str,
        row_label: Callable[[int], str],
        spare_rows: int = 0,
    ) -> None:
        self.names = names
        self.targets = targets
        self.features = [n for n in names if n not in targets]
        self.task = task
        self.max_cells = max_cells
        self.where = where
        self.row_label = row_label
        self.numeric_targets = task == "regression" or len(targets) > 1
        self.rows = 0
        self.first_row = 0  # where this builder's rows start in the array (see `part`)
        self._taken = _Taken()  # rows of the table so far, shared with its parts
        # float32 (rows the cell cap allows + `spare_rows`, n_features), filled block by block:
        # reserved, not touched, so only the rows written take memory, and no concatenation
        # copies them (without a cap, the builtins, blocks are kept and concatenated)
        self._x = (
            np.empty((max_cells // len(names) + spare_rows, len(self.features)), np.float32)
            if max_cells is not None
            else None
        )
        self._blocks: list[np.ndarray] = []
        self._y: list[np.ndarray] = []  # float64 (block rows, n_targets), numeric targets
        self._labels: list[pa.Array] = []  # one label per row, as the file spelled it

    def check_cells(self, rows: int) -> None:
        """Refuses a table whose first `rows` rows already pass the cell cap."""
        columns = len(self.names)
        if self.max_cells is not None and rows * columns > self.max_cells:
            raise too_many_cells(self.max_cells // columns + 1, columns, self.max_cells)

    def part(self, first_row: int) -> TableBuilder:
        """A builder for a later part of this table, read at the same time on another thread: its
        rows go into this builder's array from `first_row` (at least the rows before the part:
        this builder was made with that many `spare_rows`), they count toward the one cell cap,
        and `join` puts them after this builder's once both are read. Its messages count rows
        from the part's start."""
        assert self._x is not None, "parts need a cell cap"
        part = TableBuilder(
            names=self.names,
            targets=self.targets,
            task=self.task,
            max_cells=None,
            where=self.where,
            row_label=self.row_label,
        )
        part.max_cells, part.first_row = self.max_cells, first_row
        part._taken, part._x = self._taken, self._x[first_row:]
        return part

    def join(self, part: TableBuilder) -> None:
        """Appends a finished `part`'s rows, labels and targets to this builder's."""
        assert self._x is not None and part.first_row >= self.rows
        rows = self._x[part.first_row : part.first_row + part.rows]
        if part.first_row > self.rows:  # blank lines before the part: move its rows down
            # memmove: the ranges may overlap, and numpy would copy through a temporary
            ctypes.memmove(self._x[self.rows :].ctypes.data, rows.ctypes.data, rows.nbytes)
        self.rows += part.rows
        self._y += part._y
        self._labels += part._labels

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        start = self.rows
        self.check_cells(self._taken.add(batch.num_rows))
        self.rows += batch.num_rows
        if batch.num_rows == 0:
            return
        if self._x is not None:
            x = self._x[start : self.rows]
        else:
            x = np.empty((batch.num_rows, len(self.features)), dtype=np.float32)
            self._blocks.append(x)
        for j, name in enumerate(self.features):
            x[:, j] = self._numbers(batch.column(name), name, start)
        if self.numeric_targets:
            self._y.append(
                np.column_stack([self._numbers(batch.column(t), t, start) for t in self.targets])
            )
        else:
            self._labels.append(self._label_column(batch.column(self.targets[0]), start))

    def reserve(self, rows: int) -> None:
        """A table of `rows` rows, checked against the cell cap, whose columns come next by
        `add_column`."""
        self.check_cells(rows)
        self.rows = rows
        self._x = np.empty((rows, len(self.features)), dtype=np.float32)
        if self.numeric_targets:
            self._y = [np.empty((rows, len(self.targets)))]

    def add_column(self, name: str, column: pa.Array, start: int) -> None:
        """Rows `start`.. of column `name` of a `reserve`d table; a label column in order."""
        assert self._x is not None, "reserve() first"
        stop = start + len(column)
        if stop > self.rows:
            raise Unprocessable(
                f"{self.where} column {shown(name)} holds more rows than the {self.rows:,} the "
                "file says it has: the file is damaged; write it again"
            )
        if name in self.targets:
            if self.numeric_targets:
                at = self.targets.index(name)
                self._y[0][start:stop, at] = self._numbers(column, name, start)
            else:
                self._labels.append(self._label_column(column, start))
        else:
            at = self.features.index(name)
            self._x[start:stop, at] = self._numbers(column, name, start)

    def _numbers(self, column: pa.Array | pa.ChunkedArray, name: str, start: int) -> np.ndarray:
        """One column of a block -> finite float64 numbers within float32's range."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if column.null_count:
            row = _first_true(column.is_null())
            raise Unprocessable(
                f"{self.where} {self.row_label(start + row)}, column {shown(name)} is null; "
                "give every row a number in every feature column"
            )
        values = _float64(column)
        if values is None:
            row = _first_not_number(column)
            cell = column[row].as_py()
            raise Unprocessable(
                f"{self.where} {self.row_label(start + row)}, column {shown(name)}: {shown(cell)} "
                "is not a finite number; features (and regression targets) must be numbers — "
                "encode categories as numbers or drop the column"
            )
        finite = np.isfinite(values)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            cell = column[row].as_py()
            raise Unprocessable(
                f"{self.where} {self.row_label(start + row)}, column {shown(name)}: "
                f"{shown(cell if isinstance(cell, str) else str(cell))} is not a finite number; "
                "features (and regression targets) must be finite numbers — remove or impute it"
            )
        if values.size and np.abs(values).max() > FLOAT32_MAX:
            raise Unprocessable(
                f"{self.where} column {shown(name)} holds a value too large for float32 "
                "(|v| > 3.4e38)"
            )
        return values

    def _label_column(self, column: pa.Array | pa.ChunkedArray, start: int) -> pa.Array:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        name = self.targets[0]
        if column.null_count:
            row = _first_true(column.is_null())
            raise Unprocessable(
                f"{self.where} {self.row_label(start + row)} has no value in column {name!r}"
            )
        if pa.types.is_dictionary(column.type):  # a categorical column (pandas writes them)
            column = column.dictionary_decode()
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = pc.utf8_trim_whitespace(column)
            empty = pc.equal(column, _EMPTY)
            if pc.any(empty).as_py():
                row = _first_true(empty)
                raise Unprocessable(
                    f"{self.where} {self.row_label(start + row)} has no value in column {name!r}"
                )
        elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise Unprocessable(
                f"{self.where} column {name!r} holds {kind}; targets are labels (strings or "
                "integers) or numbers"
            )
        return column

    def finish(self) -> ParsedDataset:
        if self.rows == 0:
            raise Unprocessable(f"{self.where} has a header row but no data rows")
        if self._x is not None:
            x, self._x = self._x[: self.rows], None
        else:
            x = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
            self._blocks.clear()
        where = f"column {','.join(self.targets)!r}"
        if self.numeric_targets:
            y64 = np.concatenate(self._y)
            self._y.clear()
            if self.task == "classification":  # several targets asked to be classes
                raise Unprocessable(
                    f"{where} has several values per row; classification takes one label per row "
                    '(use "task": "regression" for several numeric outputs)'
                )
            task, y, classes = "regression", y64.astype(np.float32), None
        else:
            task, y, classes = self._labels_to_targets(where)
        return finish_dataset(
            x=x,
            y=y,
            task=task,
            classes=classes,
            feature_names=self.features,
            target_names=self.targets,
        )

    def _labels_to_targets(self, where: str) -> tuple[str, np.ndarray, list[Any] | None]:
        """The distinct labels decide the task and the classes; each row's label is then an
        index into them, computed in Arrow, not in a Python loop over rows."""
        labels = pa.chunked_array(self._labels).combine_chunks()
        self._labels.clear()
        encoded = labels.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        task = self.task or infer_task(distinct)
        if task == "classification":
            codes, classes = encode_classes(distinct, where=where)
            indices = encoded.indices.to_numpy(zero_copy_only=False)
            return task, codes[indices], classes
        if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
            numbers = _float64(labels)
            if numbers is None:  # infer_task saw numbers only; numpy's parse is the fallback
                numbers = np.asarray([float(v) for v in distinct])[
                    encoded.indices.to_numpy(zero_copy_only=False)
                ]
        else:
            numbers = labels.to_numpy(zero_copy_only=False).astype(np.float64)
        return task, regression_array(numbers[:, None], where=where), None


class _Taken:
    """Rows taken by the builders of one table: one, or a table's parts read on several threads
    at once, checked against one cell cap."""

    def __init__(self) -> None:
        self._rows = 0
        self._lock = threading.Lock()

    def add(self, rows: int) -> int:
        with self._lock:
            self._rows += rows
            return self._rows


def _float64(column: pa.Array) -> np.ndarray | None:
    """Numbers as float64, or None when some cell is not a number. Text is cast by Arrow (C
    speed); what Arrow's parser refuses but Python reads as a number (" 1.5", "1_000") goes
    through numpy, as the CSV reader before Arrow did."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    try:
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        return np.array(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    except ValueError:
        return None


def _first_not_number(column: pa.Array) -> int:
    for i, cell in enumerate(column.to_pylist()):
        if not (
            isinstance(cell, (int, float)) or (isinstance(cell, str) and parses_as_float(cell))
        ):
            return i
    return 0


def parses_as_float(text: str) -> bool:
    """What Python's float() reads, "nan" and " 1.5" included."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_true(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])
