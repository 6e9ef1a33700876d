"""Batch prediction for POST /v1/models/{id}/predict.csv: a CSV in, a CSV (or JSON lines)
streamed back in chunks, in the input's row order.

The whole input is parsed and checked before the first byte goes back, so a bad cell is a clear
422 rather than a response cut short; the body limit (FITSERVE_MAX_BODY_BYTES) bounds it. The
output is computed and sent chunk by chunk, so memory holds the inputs and one chunk of outputs.
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

from app.errors import Unprocessable
from app.prometheus import observe_prediction
from app.services.predict import ServedModel, token_rows
from models.tokens import TokenLists

# Rows per forward pass and per streamed chunk: big enough to amortize the call, small enough
# that the first rows arrive at once.
CHUNK_ROWS = 1024
NDJSON = "application/x-ndjson"


def parse_csv(text: str, feature_names: list[str]) -> np.ndarray:
    """(rows, n_features) float32 from a CSV whose header names the features (any order; other
    columns, such as the target, are ignored)."""
    reader = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in feature_names if name not in header]
    if not header or missing:
        raise Unprocessable(
            f"the CSV header lacks {', '.join(map(repr, missing))}; its first row must name the "
            f"model's input columns: {','.join(feature_names)} (other columns are ignored)",
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
        values = []
        for i in index:
            try:
                value = float(cells[i])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise Unprocessable(
                    f"line {line}, column {header[i]!r}: {cells[i]!r} is not a finite number",
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


def stream_predictions(
    model: ServedModel, x: np.ndarray | TokenLists, *, ndjson: bool
) -> Iterator[str]:
    header_sent = False
    rows = x.rows if isinstance(x, TokenLists) else len(x)
    for start in range(0, rows, CHUNK_ROWS):
        chunk = (
            x.take(start, min(start + CHUNK_ROWS, rows))
            if isinstance(x, TokenLists)
            else x[start : start + CHUNK_ROWS]
        )
        with observe_prediction():
            outputs = np.asarray(model.predictor.predict(chunk))
        outputs = outputs.reshape(len(outputs), -1)
        labels = model.labels(outputs)
        out = io.StringIO()
        if ndjson:
            for i, values in enumerate(outputs.tolist()):
                record: dict[str, Any] = {"outputs": values}
                if labels is not None:
                    record["prediction"] = labels[i]
                out.write(json.dumps(record) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            if not header_sent:
                writer.writerow(_columns(model, outputs.shape[1]))
                header_sent = True
            for i, row in enumerate(outputs):
                numbers = [format(float(v), ".9g") for v in row]  # float32 round-trips in 9 digits
                writer.writerow([labels[i], *numbers] if labels is not None else numbers)
        yield out.getvalue()
