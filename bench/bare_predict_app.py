"""The baseline for bench/predict.py: a bare FastAPI endpoint holding the same model.

What a user would write by hand around the same weights: load once, a pydantic body, the eval
module under inference_mode, standardization, softmax outputs and labels, returned as a dict.
No database, no auth, no limits, no metrics. Run by bench/predict.py with the same uvicorn
settings as fitserve; the weights file comes from BENCH_WEIGHTS (a path the bench wrote, never
user input).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import BaseModel

import models

# A careful hand-written server runs a tiny network on one thread (see models/predict.py's
# _SINGLE_THREAD_FLOPS): the baseline gets the same advantage fitserve's Predictor takes.
torch.set_num_threads(1)
_loaded = models.load_model(Path(os.environ["BENCH_WEIGHTS"]).read_bytes())
_module = _loaded.module.eval()
_std = _loaded.standardization
_classes = os.environ.get("BENCH_CLASSES", "").split(",")

app = FastAPI()


class Body(BaseModel):
    inputs: list[list[float]]


class Answer(BaseModel):
    outputs: list[list[float]]
    predictions: list[str | int] | None = None


@app.post("/predict", response_model=Answer)
def predict(body: Body) -> Answer:
    x = torch.from_numpy(np.asarray(body.inputs, dtype=np.float32))
    with torch.inference_mode():
        if _std is not None:
            x = _std.apply(x)
        out = _module(x).numpy()
    labels = [_classes[i] for i in out.argmax(axis=1)]
    return Answer(outputs=out.tolist(), predictions=labels)
