"""Keras JSON through real Keras 3: what `model.to_json()` writes imports, and what fitserve
exports `keras.models.model_from_json` rebuilds as the same layers (classes, arguments, outputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from models import build
from models.keras_export import to_keras_json
from models.keras_json import from_keras_json
from tests.interop.keras_parity import keras, with_keras_weights

layers = keras.layers

ACTIVATION_LAYERS: dict[str, Any] = {
    "relu": lambda: layers.ReLU(),
    "relu6": lambda: layers.ReLU(max_value=6.0),
    "relu_slope": lambda: layers.ReLU(negative_slope=0.1),
    "leaky_relu": lambda: layers.LeakyReLU(negative_slope=0.25),
    "leaky_relu_default": lambda: layers.LeakyReLU(),
    "elu": lambda: layers.ELU(),
    "elu_alpha": lambda: layers.ELU(alpha=0.5),
    "softmax": lambda: layers.Softmax(),
    "activation": lambda: layers.Activation("swish"),
}


def _keras_model(make_layer: Any) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(5), make_layer(), layers.Dense(3), make_layer()]
    )
    return model


def _classes_and_configs(model: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for layer in model.layers:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "dtype")}
        out.append((type(layer).__name__, config))
    return out


@pytest.mark.parametrize("kind", list(ACTIVATION_LAYERS))
def test_activation_layers_keep_their_class_through_fitserve(kind: str) -> None:
    model = _keras_model(ACTIVATION_LAYERS[kind])
    spec = from_keras_json(model.to_json())
    again = keras.models.model_from_json(to_keras_json(spec))
    assert _classes_and_configs(again) == _classes_and_configs(model)
    # and the imported network computes what Keras computes, with Keras' weights
    module = build(with_keras_weights(spec.model_dump(exclude_none=True), model)).eval()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    theirs = np.asarray(model(x).detach().cpu())
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_elu_alpha_survives_the_round_trip() -> None:
    model = _keras_model(lambda: layers.ELU(alpha=0.5))
    spec = from_keras_json(model.to_json())
    assert [(layer.activation, layer.alpha) for layer in spec.layers[1::2]] == [("elu", 0.5)] * 2
    again = keras.models.model_from_json(to_keras_json(spec))
    assert [type(layer).__name__ for layer in again.layers] == ["Dense", "ELU", "Dense", "ELU"]
    assert again.layers[1].alpha == again.layers[3].alpha == 0.5


def test_a_keras_class_that_does_not_compute_the_activation_is_refused() -> None:
    bad = {"layers": [{"type": "activation", "activation": "tanh", "keras_class": "ReLU",
                       "input_dim": 2}]}  # fmt: skip
    with pytest.raises(ValueError, match="keras_class ReLU computes relu or relu6 or leaky_relu"):
        build(bad)
