"""Keras Sequential JSON import/export, checked against what real Keras wrote (data/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import SpecError, build, summary
from models.keras_export import to_keras_config, to_keras_json
from models.keras_json import SUPPORTED_LAYERS, from_keras_json

DATA = Path(__file__).parent / "data"
IMPORTABLE = ["iris", "reuters", "batchnorm_regularized", "normalization_parity"]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def keras_config(name: str) -> dict[str, Any]:
    return json.loads(fixture(name)["model_json"])


@pytest.mark.parametrize("name", IMPORTABLE)
def test_import_has_keras_parameter_counts(name: str) -> None:
    record = fixture(name)
    got = summary(from_keras_json(record["model_json"]))
    assert got.total_params == record["count_params"]
    assert got.trainable_params == record["trainable_params"]
    assert got.non_trainable_params == record["non_trainable_params"]
    assert {row.name: row.params for row in got.layers} == record["layer_params"]


def test_iris_is_the_design_example() -> None:
    spec = from_keras_json(fixture("iris")["model_json"])
    assert [row.params for row in summary(spec).layers] == [40, 72, 27]
    assert spec.input_dim == 4 and spec.output_activation == "softmax"


def test_options_are_mapped() -> None:
    spec = from_keras_json(keras_config("batchnorm_regularized"))
    first, bn, act, drop, second, bn2 = spec.layers[:6]
    assert first.type == "dense" and first.use_bias is False
    assert first.kernel_initializer == "he_normal"
    assert first.kernel_regularizer is not None
    assert (first.kernel_regularizer.l1, first.kernel_regularizer.l2) == (1e-5, 1e-4)
    assert bn.type == "batch_normalization" and (bn.momentum, bn.epsilon) == (0.99, 1e-3)
    assert act.type == "activation" and act.activation == "relu"
    assert drop.type == "dropout" and drop.rate == pytest.approx(0.2)
    assert second.kernel_initializer == "he_uniform"
    assert second.kernel_regularizer is not None and second.kernel_regularizer.l2 == 1e-3
    assert second.bias_regularizer is not None
    assert second.bias_regularizer.l1 == pytest.approx(1e-4) and second.bias_regularizer.l2 == 0
    assert (bn2.momentum, bn2.epsilon) == (0.9, 1e-5)
    assert spec.layers[-1].kernel_initializer == "glorot_normal"

    parity = from_keras_json(keras_config("normalization_parity"))
    assert parity.layers[0].kernel_initializer == "lecun_normal"  # VarianceScaling(1, fan_in, tn)
    assert (parity.layers[2].activation, parity.layers[2].alpha) == ("leaky_relu", 0.1)
    assert parity.layers[3].type == "layer_normalization" and parity.layers[3].epsilon == 1e-5


def _load_keras_weights(module: torch.nn.Module, weights: dict[str, Any]) -> None:
    """Keras variables -> the built network: kernels transpose to torch's (units, inputs)."""
    torch_name = {"kernel": "weight", "bias": "bias", "gamma": "gamma", "beta": "beta",
                  "moving_mean": "moving_mean", "moving_variance": "moving_variance"}  # fmt: skip
    state = module.state_dict()
    for key, value in weights.items():
        layer, var = key.split("/")
        tensor = torch.tensor(value, dtype=torch.float32)
        if isinstance(getattr(module.layers, layer), torch.nn.LayerNorm):
            target = {"gamma": "weight", "beta": "bias"}[var]
        else:
            target = torch_name[var]
            tensor = tensor.T if var == "kernel" else tensor
        state[f"layers.{layer}.{target}"] = tensor
    module.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", ["iris", "normalization_parity"])
def test_imported_network_computes_what_keras_computes(name: str) -> None:
    record = fixture(name)
    net = build(from_keras_json(record["model_json"]))
    _load_keras_weights(net, record["parity"]["weights"])
    net.eval()
    with torch.inference_mode():
        out = net(torch.tensor(record["parity"]["inputs"], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out, np.array(record["parity"]["outputs"]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", IMPORTABLE)
def test_export_import_round_trip(name: str) -> None:
    spec = from_keras_json(keras_config(name))
    assert from_keras_json(to_keras_json(spec)) == spec


@pytest.mark.parametrize("name", ["iris", "reuters"])
def test_export_is_what_keras_writes(name: str) -> None:
    original = keras_config(name)
    original.pop("compile_config")  # training settings; fitserve keeps them in TrainingConfig
    assert to_keras_config(from_keras_json(original), name=name) == original


def test_export_keeps_a_non_default_slope_as_a_layer() -> None:
    spec = {"layers": [{"type": "dense", "units": 3, "input_dim": 2, "activation": "leaky_relu",
                        "alpha": 0.05}]}  # fmt: skip
    exported = to_keras_config(spec)["config"]["layers"]
    assert [e["class_name"] for e in exported] == ["InputLayer", "Dense", "LeakyReLU"]
    assert exported[1]["config"]["activation"] == "linear"
    assert exported[2]["config"]["negative_slope"] == 0.05
    back = from_keras_json(json.dumps(to_keras_config(spec)))
    x = torch.randn(7, 2)
    a, b = build(spec, seed=3).eval(), build(back, seed=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_unsupported_layer_names_it_and_lists_supported() -> None:
    with pytest.raises(SpecError) as err:
        from_keras_json(fixture("unsupported_layer")["model_json"])
    assert "GaussianNoise" in err.value.message
    assert all(name in err.value.message for name in SUPPORTED_LAYERS)
    assert err.value.loc == ("config", "layers", 2, "class_name")


def test_unsupported_option_names_it() -> None:
    with pytest.raises(SpecError) as err:
        from_keras_json(fixture("unsupported_option")["model_json"])
    assert "kernel_constraint" in err.value.message and "MaxNorm" in err.value.message
    assert err.value.loc == ("config", "layers", 1, "config", "kernel_constraint")


def _edited(edit: Any, name: str = "iris") -> dict[str, Any]:
    config = keras_config(name)
    edit(config)
    return config


def _dense_config(config: dict[str, Any]) -> dict[str, Any]:
    return config["config"]["layers"][1]["config"]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: c.update(class_name="Functional"), ["Sequential", "Functional"]),
        (lambda c: _dense_config(c).update(trainable=False), ["trainable", "frozen"]),
        (lambda c: _dense_config(c).update(activation="hard_silu"), ["hard_silu", "relu"]),
        (
            lambda c: _dense_config(c)["kernel_initializer"]["config"].update(stddev=1.0),
            ["GlorotUniform", "stddev"],
        ),
        (
            lambda c: _dense_config(c).update(
                kernel_initializer={"class_name": "RandomNormal", "config": {"stddev": 1.0}}
            ),
            ["RandomNormal", "stddev=1.0", "0.05"],
        ),
        (
            lambda c: _dense_config(c).update(
                kernel_regularizer={"class_name": "OrthogonalRegularizer", "config": {}}
            ),
            ["OrthogonalRegularizer", "L1L2"],
        ),
        (
            lambda c: _dense_config(c).update(
                dtype={"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}
            ),
            ["mixed_float16", "precision"],
        ),
        (
            lambda c: c["config"]["layers"][0]["config"].update(batch_shape=[None, 28, 28]),
            ["28", "flat feature vectors"],
        ),
        (lambda c: _dense_config(c).update(units=0), ["layers.0", "units"]),
    ],
)
def test_bad_configs_say_what_is_wrong(edit: Any, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        from_keras_json(_edited(edit))
    assert all(w in err.value.message for w in words), err.value.message


@pytest.mark.parametrize(
    ("name", "attr"),
    [
        (
            "batchnorm_regularized",
            lambda c: c["config"]["layers"][2]["config"].update(center=False),
        ),
        ("batchnorm_regularized", lambda c: c["config"]["layers"][2]["config"].update(axis=0)),
        ("batchnorm_regularized", lambda c: c["config"]["layers"][2]["config"].update(renorm=True)),
        (
            "normalization_parity",
            lambda c: c["config"]["layers"][4]["config"].update(rms_scaling=True),
        ),
    ],
)
def test_normalization_options_fitserve_lacks_are_refused(name: str, attr: Any) -> None:
    with pytest.raises(SpecError):
        from_keras_json(_edited(attr, name))


def test_keras_2_layout_imports() -> None:
    # tf.keras 2.x wrote no InputLayer: the first layer carries batch_input_shape, dtypes are
    # strings and initializers have no module key.
    keras2 = {
        "class_name": "Sequential",
        "keras_version": "2.15.0",
        "backend": "tensorflow",
        "config": {
            "name": "sequential",
            "layers": [
                {"class_name": "Dense", "config": {
                    "name": "dense", "trainable": True, "batch_input_shape": [None, 4],
                    "dtype": "float32", "units": 8, "activation": "relu", "use_bias": True,
                    "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                    "bias_initializer": {"class_name": "Zeros", "config": {}},
                    "kernel_regularizer": {"class_name": "L2", "config": {"l2": 0.01}},
                    "bias_regularizer": None, "activity_regularizer": None,
                    "kernel_constraint": None, "bias_constraint": None}},
                {"class_name": "Dense", "config": {"name": "dense_1", "units": 3,
                                                   "activation": "softmax"}},
            ],
        },
    }  # fmt: skip
    spec = from_keras_json(keras2)
    assert summary(spec).total_params == 4 * 8 + 8 + 8 * 3 + 3
    assert spec.layers[0].kernel_regularizer is not None
    keras2["config"]["layers"][1]["config"]["activation"] = "hard_sigmoid"
    with pytest.raises(SpecError, match="0.2x"):
        from_keras_json(keras2)


def test_missing_input_width_and_bad_json() -> None:
    config = keras_config("iris")
    del config["config"]["layers"][0]
    del config["config"]["build_input_shape"]
    del config["build_config"]
    with pytest.raises(SpecError, match=r"keras.Input\(\(n,\)\)"):
        from_keras_json(config)
    with pytest.raises(SpecError, match="not valid JSON"):
        from_keras_json("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        from_keras_json("[" * 100_000)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


REAL = keras_config("normalization_parity")
REAL_PATHS = _paths(REAL)[1:]


@settings(max_examples=120, derandomize=True, deadline=None)
@given(path=st.sampled_from(REAL_PATHS), replacement=JSON)
def test_any_edit_of_a_real_config_imports_or_raises_spec_error(
    path: Any, replacement: Any
) -> None:
    config = json.loads(json.dumps(REAL))
    target = config
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = replacement
    try:
        spec = from_keras_json(config)
    except SpecError as exc:
        assert exc.message
    else:
        # a layer whose Keras name was dropped comes back under the name fitserve gave it
        back = from_keras_json(to_keras_json(spec))
        assert back.layer_names() == spec.layer_names()
        assert [layer.model_copy(update={"name": None}) for layer in back.layers] == [
            layer.model_copy(update={"name": None}) for layer in spec.layers
        ]


@settings(max_examples=100, derandomize=True, deadline=None)
@given(value=JSON)
def test_any_json_imports_or_raises_spec_error(value: Any) -> None:
    with pytest.raises(SpecError):
        from_keras_json(json.dumps(value))
