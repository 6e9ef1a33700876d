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
from typing import Any

import numpy as np

from app.errors import PayloadTooLarge, Unprocessable, shown
from app.prometheus import observe_prediction
from app.services.predict import ServedModel, token_rows
from models.tokens import TokenLists

# Rows per forward pass and per streamed chunk: big enough to amortize the call, small enough
# that the first rows arrive at once.
CHUNK_ROWS = 1024
NDJSON = "application/x-ndjson"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FORMULA_LEADS = frozenset("=+-@\t\r")


def parse_csv(text: str, feature_names: list[str], *, max_rows: int) -> np.ndarray:
    """(rows, n_features) float32 from a CSV whose header names the features (any order; other
    columns, such as the target, are ignored). Every value must be a float32 (|v| <= 3.4e38:
    1e39 is finite in float64 but inf to the model), and there may be at most `max_rows` rows,
    counted as they are read."""
    reader = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in feature_names if name not in header]
    if not header or missing:
        raise Unprocessable(
            f"the CSV header lacks {', '.join(map(shown, missing))}; its first row must name the "
            f"model's input columns: {','.join(feature_names)} (other columns are ignored)",
            loc=("body", "header"),
        )
    repeated = sorted({name for name in header if header.count(name) > 1} & set(feature_names))
    if repeated:
        raise Unprocessable(
            f"the CSV header names {', '.join(map(shown, repeated))} more than once; which column "
            "holds the feature would be a guess: keep one of each",
            loc=("body", "header"),
        )
    index = [header.index(name) for name in feature_names]
    rows: list[list[float]] = []
    for line, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise Unprocessable(
                f"line {line} has {len(cells)} cells, the header has {len(header)}",
                loc=("body", line),
            )
        if len(rows) == max_rows:
            raise PayloadTooLarge(
                f"the CSV has more than {max_rows:,} rows, the limit per request "
                "(FITSERVE_MAX_PREDICT_ROWS): split it into several requests"
            )
        values = []
        for i in index:
            try:
                value = float(cells[i])
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
                raise Unprocessable(
                    f"line {line}, column {shown(header[i])}: {shown(cells[i])} is not a finite "
                    "float32 number (|v| <= 3.4e38)",
                    loc=("body", line, header[i]),
                )
            values.append(value)
        rows.append(values)
    if not rows:
        raise Unprocessable("the CSV has a header but no rows to predict", loc=("body",))
    return np.asarray(rows, dtype=np.float32)


def parse_token_lines(text: str, model: ServedModel) -> TokenLists:
    """One document per line for a category_encoding model: a JSON list (`[12, 7, 431]`, NDJSON;
    `[]` for an empty document) or comma-separated ids (`12,7,431`); blank lines are skipped. A
    bad id is a 422 naming the line."""
    rows: list[list[float]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
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
