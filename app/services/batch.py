"""Batch prediction for POST /v1/models/{id}/predict.csv: a CSV in, a CSV (or JSON lines)
streamed back in chunks, in the input's row order.

The whole input is parsed and checked, and every output computed and checked finite, before the
first byte goes back, so a bad cell or a non-finite output is a clear 422 rather than a 200 cut
short; FITSERVE_MAX_PREDICT_ROWS bounds the rows (counted as they are read), as for /predict.
The output is formatted and sent chunk by chunk; text cells that a spreadsheet would run as a
formula (a label such as `=cmd|...`) are escaped with a leading quote (OWASP's CSV injection rule).
The model comes from `app.services.predict` like every other prediction's.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from app.errors import PayloadTooLarge, Unprocessable, shown
from app.prometheus import observe_prediction
from app.services.predict import ServedModel, token_rows
from models.tokens import TokenLists

# Rows per forward pass and per streamed chunk: big enough to amortize the call, small enough
# that the first rows arrive at once.
CHUNK_ROWS = 1024
# Bytes per block of the streamed CSV: ~16,000 rows of iris, so a body past the row limit is
# refused within a block or two of it
BLOCK_BYTES = 1 << 18
NDJSON = "application/x-ndjson"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FORMULA_LEADS = frozenset("=+-@\t\r")


class _Widths:
    """Arrow's invalid_row_handler: a row of another width than the header's is skipped when it
    holds nothing but blanks and commas (csv.reader's path skipped those), and otherwise noted
    (its line, its width) and skipped too, so that the rows before it in its block are still
    checked: the first problem in the file is the one reported."""

    def __init__(self) -> None:
        self.blank_lines: list[int] = []  # sorted: Arrow reads in order (use_threads=False)
        self.first: tuple[int, int] | None = None  # (line, cells)

    def __call__(self, row: pa_csv.InvalidRow) -> str:
        line = row.number if row.number is not None else -1
        if not row.text.strip(" \t\r,"):
            self.blank_lines.append(line)
        elif self.first is None:
            self.first = (line, row.actual_columns)
        return "skip"


class Readable(Protocol):
    """A binary file as far as the parser reads one (a BytesIO, or a request's `RequestBody`)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def parse_csv(
    source: str | bytes | Readable, feature_names: list[str], *, max_rows: int
) -> np.ndarray:
    """(rows, n_features) float32 from a CSV whose header names the features (any order; other
    columns, such as the target, are ignored). Every value must be a float32 (|v| <= 3.4e38:
    1e39 is finite in float64 but inf to the model), and there may be at most `max_rows` rows.

    Read block by block with Arrow's streaming CSV reader (`source` may be a stream that is
    still arriving, `RequestBody`): each block's rows are counted against `max_rows` and
    checked as they arrive, so a body past the limit is refused at the first block that passes
    it, and the first problem is named by its line as csv.reader counted them (the header is
    line 1; blank lines count, as before). Cells go through Arrow as text and are converted by
    Arrow in C; a column Arrow can't convert is converted by Python's float() instead, which
    also names the cell, as before.
    """
    if isinstance(source, str):
        source = source.encode("utf-8")
    stream: Readable = io.BytesIO(source) if isinstance(source, bytes) else source
    head = _head(stream)
    # Every column read as text; Arrow names them f0, f1, ... from the first row's width (the
    # first row, the header, is read as data so that its names are seen as written)
    header_line = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
    columns = len(next(csv.reader([header_line]), [])) + 64
    widths = _Widths()
    try:
        reader = pa_csv.open_csv(
            pa.PythonFile(_Replay(head, stream), mode="r"),
            read_options=pa_csv.ReadOptions(
                block_size=BLOCK_BYTES, use_threads=False, autogenerate_column_names=True
            ),
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=widths
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(columns)},
                strings_can_be_null=False,
                check_utf8=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        _raise_arrow(exc, stream)
        _missing_header([], feature_names)  # an empty body: no header at all
        raise
    table = _Table(feature_names, max_rows, widths)
    taken = getattr(stream, "taken", None)  # a RequestBody paces Arrow's reads by its parsing
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                _raise_arrow(exc, stream)
                raise
            table.add(batch)
            if taken is not None:
                taken(BLOCK_BYTES)
    finally:
        stream.close()  # a read still waiting for the parser returns: Arrow's thread ends
        reader.close()
    problem = getattr(stream, "problem", None)  # the body ended early: not the CSV's end
    if problem is not None:
        raise problem
    return table.finish()


def _head(stream: Readable) -> bytes:
    """The stream's first bytes, read ahead up to the end of its first line (the header)."""
    head = b""
    while b"\n" not in head:
        chunk = stream.read(1 << 16)
        if not chunk:
            break
        head += chunk
    return head


class _Replay(io.RawIOBase):
    """A file that reads `head` again before the rest of `stream` (Arrow takes a file-like)."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        super().__init__()
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        out, self._head = self._head, b""
        if size < 0:
            return out + self._stream.read()
        if len(out) > size:
            out, self._head = out[:size], out[size:]
            return out
        return out + self._stream.read(size - len(out))

    def readable(self) -> bool:
        return True


def _raise_arrow(exc: pa.ArrowInvalid, stream: Readable) -> None:
    """Arrow's refusal as the CSV's problem; a problem of the stream itself (the client went
    away, the body passed the byte limit) raised as it is."""
    problem = getattr(stream, "problem", None)
    if problem is not None:
        raise problem
    if "UTF8" in str(exc) or "UTF-8" in str(exc):
        raise Unprocessable("the CSV must be UTF-8 text", loc=("body",)) from None


def _missing_header(header: list[str], feature_names: list[str]) -> None:
    missing = [name for name in feature_names if name not in header]
    if not header or missing:
        raise Unprocessable(
            f"the CSV header lacks {', '.join(map(shown, missing))}; its first row must name the "
            f"model's input columns: {','.join(feature_names)} (other columns are ignored)",
            loc=("body", "header"),
        )


class _Table:
    """The blocks of a predict.csv body, checked and converted as they arrive."""

    def __init__(self, feature_names: list[str], max_rows: int, widths: _Widths) -> None:
        self.feature_names = feature_names
        self.max_rows = max_rows
        self.widths = widths
        self.header: list[str] | None = None
        self.index: list[int] = []
        self.records = 1  # rows Arrow has handed over so far, the header included
        self.rows = 0  # data rows kept
        self.parts: list[np.ndarray] = []

    def add(self, batch: pa.RecordBatch) -> None:
        columns = batch.columns
        first = 0
        if self.header is None:
            if batch.num_rows == 0:
                return
            self._read_header([str(column[0]) for column in columns])
            first = 1
        records = batch.num_rows - first
        if records == 0:
            if self.widths.first is not None:
                raise self._width_error(*self.widths.first)
            return
        columns = [column.slice(first) for column in columns]
        # line of each record: Arrow's record count, plus the lines it skipped before it
        lines = self._lines(self.records + np.arange(records, dtype=np.int64))
        self.records += records
        blank = _all_blank(columns)
        kept = np.flatnonzero(~blank)
        width = self.widths.first
        if width is not None:  # a row of the wrong width: only the rows before it count
            kept = kept[lines[kept] < width[0]]
        # (line, order, error): the first problem of the block by line; at one line the row
        # limit is named before a value, as each row was checked in that order
        problems: list[tuple[int, int, Exception]] = []
        over = self.rows + len(kept) - self.max_rows
        if over > 0:
            problems.append((int(lines[kept[len(kept) - over]]), 0, self._too_many()))
        values = np.empty((len(kept), len(self.index)), dtype=np.float32)
        for j, i in enumerate(self.index):
            text = columns[i].take(pa.array(kept, type=pa.int64()))
            numbers, bad = _numbers(text)
            if bad is None:
                values[:, j] = numbers
            else:  # (its values are not kept: the block ends in an error)
                cell = text[bad].as_py()
                name = (self.header or [])[i]
                line = int(lines[kept[bad]])
                problems.append((line, 1 + j, _bad_cell(line, name, cell)))
        if width is not None:
            problems.append((width[0], 0, self._width_error(*width)))
        if problems:
            raise min(problems, key=lambda p: p[:2])[2]
        self.parts.append(values)
        self.rows += len(kept)

    def _lines(self, records: np.ndarray) -> np.ndarray:
        skipped = np.asarray(self.widths.blank_lines, dtype=np.int64)
        if len(skipped) == 0:
            return records + 1
        # record r (0-based, header 0) is on line r + 1 + the skipped lines before it
        lines = records + 1
        for _ in range(len(skipped) + 1):  # converges: each pass adds the lines passed over
            shifted = records + 1 + np.searchsorted(skipped, lines, side="right")
            if np.array_equal(shifted, lines):
                break
            lines = shifted
        return lines

    def _read_header(self, raw: list[str]) -> None:
        header = [name.strip() for name in raw]
        _missing_header(header if any(header) else [], self.feature_names)
        repeated = sorted(
            {name for name in header if header.count(name) > 1} & set(self.feature_names)
        )
        if repeated:
            raise Unprocessable(
                f"the CSV header names {', '.join(map(shown, repeated))} more than once; which "
                "column holds the feature would be a guess: keep one of each",
                loc=("body", "header"),
            )
        self.header = header
        self.index = [header.index(name) for name in self.feature_names]

    def _width_error(self, line: int, cells: int) -> Unprocessable:
        return Unprocessable(
            f"line {line} has {cells} cells, the header has {len(self.header or [])}",
            loc=("body", line),
        )

    def _too_many(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the CSV has more than {self.max_rows:,} rows, the limit per request "
            "(FITSERVE_MAX_PREDICT_ROWS): split it into several requests"
        )

    def finish(self) -> np.ndarray:
        if self.header is None:
            _missing_header([], self.feature_names)
        if self.widths.first is not None:  # in a block with no other row
            raise self._width_error(*self.widths.first)
        if self.rows == 0:
            raise Unprocessable("the CSV has a header but no rows to predict", loc=("body",))
        return np.concatenate(self.parts)


def _all_blank(columns: list[pa.Array]) -> np.ndarray:
    """Rows whose every cell is empty or whitespace (csv.reader's path skipped them)."""
    blank: pa.Array | None = None
    for column in columns:
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
        blank = empty if blank is None else pc.and_(blank, empty)
    assert blank is not None
    return np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)


def _numbers(text: pa.Array) -> tuple[np.ndarray, int | None]:
    """float64 values of a text column and the index of its first cell that is not a finite
    float32 (or None). Arrow converts in C; where it refuses a cell, Python's float() reads the
    column (" 1.5" and "1_0" are numbers to it, as they were to this endpoint before Arrow)."""
    try:
        numbers = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        numbers = np.array([_float(cell) for cell in text.to_pylist()], dtype=np.float64)
    ok = np.isfinite(numbers) & (np.abs(numbers) <= _FLOAT32_MAX)
    return numbers, (None if ok.all() else int(np.argmin(ok)))


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _bad_cell(line: int, name: str, cell: str) -> Unprocessable:
    return Unprocessable(
        f"line {line}, column {shown(name)}: {shown(cell)} is not a finite float32 number "
        "(|v| <= 3.4e38)",
        loc=("body", line, name),
    )


def parse_token_lines(text: str, model: ServedModel, *, max_rows: int) -> TokenLists:
    """One document per line for a category_encoding model: a JSON list (`[12, 7, 431]`, NDJSON;
    `[]` for an empty document) or comma-separated ids (`12,7,431`); blank lines are skipped. A
    bad id is a 422 naming the line; more than `max_rows` documents a 413, counted as read."""
    rows: list[list[float]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if len(rows) == max_rows:
            raise PayloadTooLarge(
                f"the body has more than {max_rows:,} documents, the limit per request "
                "(FITSERVE_MAX_PREDICT_ROWS): split it into several requests"
            )
        try:
            value = json.loads(line) if line.startswith("[") else [int(c) for c in line.split(",")]
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise Unprocessable(
                f"line {number} is not a list of token ids; write [12, 7, 431] or 12,7,431",
                loc=("body", number),
            )
        rows.append(value)
        lines.append(number)
    if not rows:
        raise Unprocessable("the body has no documents to predict", loc=("body",))
    try:
        return token_rows(model, rows, where="line")
    except Unprocessable as exc:  # name the line as the client counts them, from 1
        row = exc.loc[-1] if isinstance(exc.loc[-1], int) else None
        if row is None:
            raise
        message = exc.message.replace(f"line[{row}]", f"line {lines[row]}", 1)
        raise Unprocessable(message, loc=("body", lines[row])) from None


def check_width(model: ServedModel, x: np.ndarray | TokenLists) -> None:
    if isinstance(x, TokenLists):
        return  # documents have any length
    if x.shape[1] != model.predictor.n_features:
        raise Unprocessable(
            f"the model takes {model.predictor.n_features} inputs, the CSV gave {x.shape[1]}",
            loc=("body",),
        )


def _columns(model: ServedModel, n_outputs: int) -> list[str]:
    """Output column names; a `prediction` label column leads them for classification."""
    if model.labelled:
        classes = model.classes or []
        if n_outputs == 1:  # sigmoid: the probability of the second (positive) class
            return ["prediction", f"p_{classes[-1]}"]
        return ["prediction", *(f"p_{c}" for c in classes)]
    if len(model.target_names) == n_outputs:
        return list(model.target_names)
    return [f"output_{i}" for i in range(n_outputs)]


def predict_all(model: ServedModel, x: np.ndarray | TokenLists) -> np.ndarray:
    """(rows, outputs) for every row, checked finite as /predict checks them: all of it is
    computed before the status goes out, so a failure is a 422, not a 200 cut short."""
    parts = []
    rows = x.rows if isinstance(x, TokenLists) else len(x)
    for start in range(0, rows, CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, rows)
        chunk = x.take(start, end) if isinstance(x, TokenLists) else x[start:end]
        with observe_prediction():
            out = np.asarray(model.predictor.predict(chunk))
        parts.append(out.reshape(len(out), -1))
    outputs = np.concatenate(parts)
    finite = np.isfinite(outputs).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise Unprocessable(
            f"the model's output for data row {bad + 1} is not a finite number; are the inputs "
            "far outside the range it was trained on?",
            loc=("body", bad + 2),
        )
    return outputs


def csv_cell(value: Any) -> str:
    """Text for a CSV cell that a spreadsheet won't run: OWASP's rule for CSV injection, a
    leading = + - @ tab or carriage return is escaped with a single quote."""
    text = str(value)
    return "'" + text if text[:1] in _FORMULA_LEADS else text


def stream_predictions(model: ServedModel, outputs: np.ndarray, *, ndjson: bool) -> Iterator[str]:
    """The computed outputs (`predict_all`), formatted a chunk of rows at a time."""
    for start in range(0, len(outputs), CHUNK_ROWS):
        chunk = outputs[start : start + CHUNK_ROWS]
        labels = model.labels(chunk)
        out = io.StringIO()
        if ndjson:
            for i, values in enumerate(chunk.tolist()):
                record: dict[str, Any] = {"outputs": values}
                if labels is not None:
                    record["prediction"] = labels[i]
                out.write(json.dumps(record, allow_nan=False) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            if start == 0:
                writer.writerow([csv_cell(c) for c in _columns(model, chunk.shape[1])])
            for i, row in enumerate(chunk):
                numbers = [format(float(v), ".9g") for v in row]  # float32 round-trips in 9 digits
                writer.writerow([csv_cell(labels[i]), *numbers] if labels is not None else numbers)
        yield out.getvalue()
