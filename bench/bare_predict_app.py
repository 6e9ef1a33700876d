"""The baseline for bench/predict.py: the fastest plain FastAPI endpoint holding the same model.

What a careful user would write by hand around the same weights: load once, an `async def`
endpoint (no thread-pool hop for a sub-millisecond network), the body parsed by orjson straight
into a float32 array (its shape checked, so malformed input is a 422 and not a 500), the eval
module under inference_mode, standardization, softmax outputs and labels, serialized by orjson
into a plain Response (no response_model re-validation, no jsonable_encoder pass). No database,
no auth, no limits, no metrics. Run by bench/predict.py with the same uvicorn settings as
fitserve; the weights file comes from BENCH_WEIGHTS (a path the bench wrote, never user input).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request, Response

import models

# A careful hand-written server runs a tiny network on one thread (see models/predict.py's
# _SINGLE_THREAD_FLOPS): the baseline gets the same advantage fitserve's Predictor takes.
torch.set_num_threads(1)
_loaded = models.load_model(Path(os.environ["BENCH_WEIGHTS"]).read_bytes())
_module = _loaded.module.eval()
_std = _loaded.standardization
_classes = np.array(os.environ.get("BENCH_CLASSES", "").split(","), dtype=object)
_features = int(os.environ["BENCH_FEATURES"])

app = FastAPI()


def _invalid(detail: str) -> Response:
    return Response(orjson.dumps({"detail": detail}), status_code=422,
                    media_type="application/json")  # fmt: skip


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        inputs = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float32)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return _invalid(f"expected {{'inputs': [[number, ...], ...]}}: {exc}")
    if inputs.ndim != 2 or inputs.shape[1] != _features:
        return _invalid(f"expected rows of {_features} numbers, got shape {list(inputs.shape)}")
    x = torch.from_numpy(inputs)
    with torch.inference_mode():
        if _std is not None:
            x = _std.apply(x)
        out = _module(x).numpy()
    labels = _classes[out.argmax(axis=1)].tolist()
    return Response(orjson.dumps({"outputs": out, "predictions": labels},
                                 option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")  # fmt: skip
