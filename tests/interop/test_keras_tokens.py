"""The category_encoding layer against real Keras (3.15, torch backend) and onnxruntime: the
same encodings, the same parameter counts, JSON both ways, and the same predictions from the same
weights on token ids."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402  (the backend is chosen by the variable above, at import)

import models  # noqa: E402
from models import SpecError, summary  # noqa: E402
from models.keras_export import to_keras_json  # noqa: E402
from models.keras_json import from_keras_json  # noqa: E402
from models.layers import CategoryEncoding  # noqa: E402
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, to_onnx  # noqa: E402
from models.tokens import TokenLists  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="KERAS_BACKEND is set to another backend"
)

REUTERS = {
    "layers": [
        {"type": "category_encoding", "num_tokens": 10_000, "output_mode": "multi_hot"},
        {"type": "dense", "units": 256, "activation": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 46, "activation": "softmax"},
    ]
}


@pytest.mark.parametrize("mode", ["multi_hot", "count", "one_hot"])
def test_the_layer_encodes_as_keras_does(mode: str) -> None:
    rng = np.random.default_rng(0)
    width = 1 if mode == "one_hot" else 9
    ids = rng.integers(0, 30, (64, width))  # rectangular: what a Keras layer takes
    expected = np.asarray(keras.layers.CategoryEncoding(num_tokens=30, output_mode=mode)(ids))
    got = CategoryEncoding(30, mode)(torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_an_id_at_num_tokens_is_an_error_in_keras_too() -> None:
    with pytest.raises(Exception, match="smaller than num_classes"):
        keras.layers.CategoryEncoding(num_tokens=4, output_mode="count")(np.array([[0, 4]]))
    network = models.NetworkSpec.model_validate(
        {"layers": [{"type": "category_encoding", "num_tokens": 4}, {"type": "dense", "units": 2}]}
    )
    with pytest.raises(SpecError, match="row 0 has token id 4"):
        models.Predictor(models.save_model(models.build(network), network)).predict([[0, 4]])


def _keras_reuters() -> Any:
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int64"),
            keras.layers.CategoryEncoding(num_tokens=10_000, output_mode="multi_hot"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(46, activation="softmax"),
        ]
    )


def test_keras_json_imports_with_keras_counts() -> None:
    model = _keras_reuters()
    spec = from_keras_json(model.to_json())
    assert spec.layers[0].type == "category_encoding"
    assert spec.encoding is not None and spec.encoding.num_tokens == 10_000
    assert summary(spec).total_params == model.count_params() == 2_599_086
    # Keras' deprecated "binary" is multi_hot; sparse output can't be reproduced
    config = json.loads(model.to_json())
    encoding = config["config"]["layers"][1]["config"]
    encoding["output_mode"] = "binary"
    assert from_keras_json(config).layers[0].output_mode == "multi_hot"  # type: ignore[union-attr]
    encoding["sparse"] = True
    with pytest.raises(SpecError, match="sparse=True is not supported"):
        from_keras_json(config)


@pytest.mark.parametrize("mode", ["multi_hot", "count", "one_hot"])
def test_exported_json_loads_in_keras_and_predicts_the_same(mode: str) -> None:
    spec = {
        "layers": [
            {"type": "category_encoding", "num_tokens": 50, "output_mode": mode},
            {"type": "dense", "units": 16, "activation": "relu"},
            {"type": "dropout", "rate": 0.5},
            {"type": "dense", "units": 4, "activation": "softmax"},
        ]
    }
    model = keras.models.model_from_json(to_keras_json(spec))
    assert model.count_params() == summary(spec).total_params == 50 * 16 + 16 + 16 * 4 + 4
    back = from_keras_json(to_keras_json(spec))
    assert back == from_keras_json(to_keras_json(back))  # names made explicit on the first trip
    assert back.layer_names() == models.NetworkSpec.model_validate(spec).layer_names()
    assert back.encoding is not None
    assert (back.encoding.num_tokens, back.encoding.output_mode) == (50, mode)
    # the same weights in both: fitserve's Dense weight is Keras' kernel transposed
    network = models.build(spec, seed=1)
    dense = [m for m in network.layers if isinstance(m, models.layers.Dense)]
    model.set_weights([w.detach().numpy() for d in dense for w in (d.weight.T, d.bias)])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (32, 1 if mode == "one_hot" else 12))
    expected = model(ids, training=False).detach().cpu().numpy()  # a torch tensor here
    got = models.Predictor(models.save_model(network, spec)).predict(ids.tolist())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_onnx_takes_the_token_ids_padded_with_minus_one() -> None:
    spec = {
        "layers": [
            {"type": "category_encoding", "num_tokens": 40, "output_mode": "multi_hot"},
            {"type": "dense", "units": 8, "activation": "relu"},
            {"type": "dense", "units": 3, "activation": "softmax"},
        ]
    }
    weights = models.save_model(models.build(spec, seed=2), spec)
    docs = [[1, 5, 5, 39], [], [7], [2, 3, 4, 5, 6, 7, 8]]
    expected = models.Predictor(weights).predict(docs)
    session = ort.InferenceSession(to_onnx(weights), providers=["CPUExecutionProvider"])
    (tensor,) = session.get_inputs()
    assert tensor.name == INPUT_NAME and tensor.type == "tensor(int64)"
    padded = TokenLists.from_lists(docs).padded().numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: padded})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # a different length and batch: both axes are dynamic
    got = session.run([OUTPUT_NAME], {INPUT_NAME: padded[1:3, :1]})[0]
    np.testing.assert_allclose(got, expected[1:3], rtol=1e-5, atol=1e-6)
