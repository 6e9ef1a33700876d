"""The pure parts, without a server: the SSE parser, error mapping, the progress line, spec files,
and batch prediction's CSV parsing and chunked output with a real trained network."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from fitserve_client import EpochMetrics, InvalidInput, NotFound, ServerError
from fitserve_client.cli import Progress, _read_spec
from fitserve_client.client_types import EventParser, error_from_response

import models
from app.errors import Unprocessable
from app.inference import ServedModel
from app.services.batch import CHUNK_ROWS, parse_csv, predict_all, stream_predictions


def test_event_parser_follows_the_sse_rules() -> None:
    parser = EventParser()
    lines = [
        "retry: 2500", "", ": keep-alive", "",
        "event: epoch", "id: 7", 'data: {"epoch": 7,', 'data: "loss": 0.5}', "",
        'data: {"plain": true}', "",
    ]  # fmt: skip
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert parser.retry_ms == 2500
    assert [(e.event, e.id, e.data) for e in events] == [
        ("epoch", "7", {"epoch": 7, "loss": 0.5}),
        ("message", "7", {"plain": True}),  # the id persists until changed, as in browsers
    ]


def test_errors_map_to_classes_with_the_servers_words() -> None:
    request = httpx.Request("GET", "http://x/v1/jobs/1")
    missing = error_from_response(
        httpx.Response(
            404, json={"detail": "job '1' not found", "code": "not_found"}, request=request
        )
    )
    assert isinstance(missing, NotFound) and missing.code == "not_found"
    assert str(missing) == "404 job '1' not found"
    fastapi_style = error_from_response(
        httpx.Response(
            422,
            json={"detail": [{"loc": ["body", "network", "layers"], "msg": "Field required"}]},
            request=request,
        )
    )
    assert isinstance(fastapi_style, InvalidInput)
    assert "network.layers: Field required" in str(fastapi_style)
    proxy = error_from_response(httpx.Response(502, text="Bad Gateway", request=request))
    assert isinstance(proxy, ServerError) and "Bad Gateway" in str(proxy)


def test_progress_lines_with_measured_eta() -> None:
    out = io.StringIO()
    progress = Progress(out, total=4)
    for epoch in (1, 2, 4):
        progress.epoch(
            EpochMetrics(epoch=epoch, loss=1.0 / epoch, accuracy=0.5, val_loss=0.9, seconds=2.0)
        )
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/4 [######..................] loss 1.0000 accuracy 0.5000")
    assert lines[0].endswith("ETA 6s")  # 3 epochs left at the 2 s measured so far
    assert lines[1].endswith("ETA 4s") and "val_loss 0.9000" in lines[1]
    assert "ETA" not in lines[2] and "[" + "#" * 24 + "]" in lines[2]


def test_spec_files(tmp_path: Path) -> None:
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"network": {"layers": []}, "training": {"epochs": 3}}))
    assert _read_spec(both) == ({"layers": []}, {"epochs": 3})
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"layers": [{"type": "dense"}]}))
    assert _read_spec(bare) == ({"layers": [{"type": "dense"}]}, {})
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        _read_spec(other)
    with pytest.raises(ValueError, match="cannot read"):
        _read_spec(tmp_path / "missing.json")


def test_batch_csv_parsing_names_the_problem() -> None:
    names = ["a", "b"]
    x = parse_csv("b,target,a\n2,x,1\n\n4,y,3\n", names, max_rows=10)
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]  # by name, in the model's order
    with pytest.raises(Unprocessable, match="lacks 'b'"):
        parse_csv("a,c\n1,2\n", names, max_rows=10)
    with pytest.raises(Unprocessable, match="line 3, column 'b': 'inf' is not a finite float32"):
        parse_csv("a,b\n1,2\n1,inf\n", names, max_rows=10)
    with pytest.raises(Unprocessable, match="line 2 has 3 cells"):
        parse_csv("a,b\n1,2,3\n", names, max_rows=10)
    with pytest.raises(Unprocessable, match="no rows"):
        parse_csv("a,b\n", names, max_rows=10)


def test_batch_output_streams_in_chunks_matching_one_big_predict() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    network = {
        "layers": [
            {"type": "dense", "units": 4, "activation": "tanh", "input_dim": 3},
            {"type": "dense", "units": 2, "activation": "softmax"},
        ]
    }
    training = {"loss": "sparse_categorical_crossentropy", "epochs": 2, "seed": 0}
    result = models.fit(network, training, x, y, device="cpu")
    predictor = models.Predictor(models.save_model(result, network, result.standardization))

    model = ServedModel(
        id="m", owner_id=None, task="classification", classes=["neg", "pos"],
        feature_names=["a", "b", "c"], target_names=["label"], predictor=predictor,
    )  # fmt: skip
    big = np.tile(x, (13, 1))  # 2600 rows: three chunks
    chunks = list(stream_predictions(model, predict_all(model, big), ndjson=False))
    assert len(chunks) == -(-len(big) // CHUNK_ROWS)
    rows = list(csv.reader(io.StringIO("".join(chunks))))
    assert rows[0] == ["prediction", "p_neg", "p_pos"]
    assert len(rows) == len(big) + 1
    expected = predictor.predict(big)
    got = np.array([[float(v) for v in row[1:]] for row in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)  # 9 significant digits round-trip float32
    assert [row[0] for row in rows[1:]] == [["neg", "pos"][i] for i in expected.argmax(axis=1)]


def test_progress_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress(out, total=2)
    progress.epoch(EpochMetrics(epoch=1, loss=0.5, seconds=1.0))
    progress.epoch(EpochMetrics(epoch=2, loss=0.25, seconds=1.0))
    progress.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert text.split("\r\x1b[2K")[-1].startswith("epoch 2/2 [")
