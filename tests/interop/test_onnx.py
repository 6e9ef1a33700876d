"""ONNX export: onnxruntime gives what models.Predictor gives (to 1e-5), standardization in."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.csv_ingest import parse_csv
from app.data import BUILTINS
from models import build
from models.data import Standardization
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, to_onnx
from models.predict import Predictor
from models.spec import ActivationName
from models.train import fit
from models.weights import save_model


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]


def test_trained_iris_model_matches_predictor() -> None:
    iris = parse_csv(BUILTINS["iris"].read_bytes(), target="species")
    x, y = iris.x, iris.y
    network = {
        "layers": [
            {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
            {"type": "dropout", "rate": 0.3},
            {"type": "dense", "units": 8, "activation": "relu"},
            {"type": "dense", "units": 3, "activation": "softmax"},
        ]
    }
    training = {"loss": "sparse_categorical_crossentropy", "optimizer": "adam", "epochs": 3,
                "batch_size": "full", "standardize": True, "seed": 0}  # fmt: skip
    result = fit(network, training, x.astype(np.float32), y.astype(np.int64), device="cpu")
    assert result.standardization is not None  # the graph must carry it
    weights = save_model(result, network)

    expected = Predictor(weights).predict(x)
    got = run_onnx(to_onnx(weights), x)
    assert got.shape == (150, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # the softmax is in the graph
    # the batch dimension is dynamic: one row and many rows from the same graph
    np.testing.assert_allclose(run_onnx(to_onnx(weights), x[:1]), expected[:1], atol=1e-5)


ACTIVATIONS: tuple[str, ...] = ActivationName.__args__


def _random_weights(network: dict[str, Any], *, standardize: bool) -> bytes:
    """A network with random weights everywhere (batch-norm statistics too), saved as the worker
    saves it: the export must not depend on freshly initialized values such as beta = 0."""
    module = build(network, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            values = torch.randn(tensor.shape, generator=g) * 0.5
            tensor.copy_(values.abs() + 0.5 if name.endswith("moving_variance") else values)
    stats = None
    if standardize:
        stats = Standardization(mean=torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0]),
                                std=torch.tensor([2.0, 0.5, 1.0, 4.0, 1.5]))  # fmt: skip
    return save_model(module, network, stats)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_and_layer_exports(activation: str) -> None:
    network = {
        "layers": [
            {"type": "dense", "units": 6, "activation": activation, "input_dim": 5},
            {"type": "batch_normalization", "momentum": 0.9, "epsilon": 1e-4},
            {"type": "activation", "activation": "leaky_relu", "alpha": 0.1},
            {"type": "layer_normalization", "epsilon": 1e-5},
            {"type": "dropout", "rate": 0.5},
            {"type": "dense", "units": 3, "activation": activation, "use_bias": False},
        ]
    }
    weights = _random_weights(network, standardize=activation == "softmax")
    x = np.random.default_rng(3).normal(0.0, 2.0, (64, 5)).astype(np.float32)
    expected = Predictor(weights).predict(x)
    np.testing.assert_allclose(run_onnx(to_onnx(weights), x), expected, rtol=0, atol=1e-5)
