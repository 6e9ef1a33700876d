"""NetworkSpec -> Keras Sequential JSON, as Keras 3's `model.to_json()` writes it.

`keras.models.model_from_json(to_keras_json(spec))` rebuilds the same layers with the same
parameter counts; `models.keras_json.from_keras_json` reads it back to an equal spec.
"""

from __future__ import annotations

import json
from typing import Any

from models.keras_objects import DEFAULT_ALPHA, INITIALIZER_CLASS, KERAS_INITIALIZERS
from models.spec import (
    Activation,
    BatchNormalization,
    CategoryEncoding,
    Dense,
    Dropout,
    LayerNormalization,
    NetworkSpec,
    Regularizer,
)


def _obj(module: str, cls: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"module": module, "class_name": cls, "config": config, "registered_name": None}


_FLOAT32 = _obj("keras", "DTypePolicy", {"name": "float32"})


def _init_obj(name: str) -> dict[str, Any]:
    cls = INITIALIZER_CLASS[name]
    if cls in ("Zeros", "Ones"):
        return _obj("keras.initializers", cls, {})
    config: dict[str, Any] = {"seed": None, **KERAS_INITIALIZERS[cls][1]}
    if name.startswith(("glorot", "he_", "lecun")):  # the VarianceScaling family (Keras >= 3.9)
        config.update(input_axes=None, output_axes=None)
    return _obj("keras.initializers", cls, config)


def _reg_obj(reg: Regularizer | None) -> dict[str, Any] | None:
    if reg is None or (reg.l1 == 0 and reg.l2 == 0):
        return None
    if reg.l2 == 0:
        return _obj("keras.regularizers", "L1", {"l1": reg.l1})
    if reg.l1 == 0:
        return _obj("keras.regularizers", "L2", {"l2": reg.l2})
    return _obj("keras.regularizers", "L1L2", {"l1": reg.l1, "l2": reg.l2})


def _layer(cls: str, config: dict[str, Any], width: int | None) -> dict[str, Any]:
    entry = _obj("keras.layers", cls, config)
    if width is not None:  # Keras writes build_config for layers that own weights
        entry["build_config"] = {"input_shape": [None, width]}
    return entry


def _base(name: str) -> dict[str, Any]:
    return {"name": name, "trainable": True, "dtype": _FLOAT32}


def _activation_entries(
    name: str, activation: str, alpha: float | None, keras_class: str = "Activation"
) -> dict[str, Any]:
    """The activation as the Keras layer class it came from (ReLU, LeakyReLU, ELU, Softmax), or
    as an Activation layer unless a non-default slope needs the LeakyReLU/ELU layer to survive."""
    base = _base(name)
    if keras_class == "ReLU":
        slope = alpha if activation == "leaky_relu" else 0.0
        max_value = 6.0 if activation == "relu6" else None
        config = {**base, "max_value": max_value, "negative_slope": slope, "threshold": 0.0}
        return _layer("ReLU", config, None)
    if keras_class == "Softmax":
        return _layer("Softmax", {**base, "axis": -1}, None)
    leaky = alpha if alpha is not None else DEFAULT_ALPHA["leaky_relu"]
    if activation == "leaky_relu" and (
        keras_class == "LeakyReLU" or leaky != DEFAULT_ALPHA[activation]
    ):
        return _layer("LeakyReLU", {**base, "negative_slope": leaky}, None)
    elu = alpha if alpha is not None else DEFAULT_ALPHA["elu"]
    if activation == "elu" and (keras_class == "ELU" or elu != DEFAULT_ALPHA["elu"]):
        return _layer("ELU", {**base, "alpha": elu}, None)
    return _layer("Activation", {**base, "activation": activation}, None)


def to_keras_config(
    network: NetworkSpec | dict[str, Any], *, name: str = "sequential"
) -> dict[str, Any]:
    """Keras 3's Sequential config for this spec, as `model.to_json()` would write it.

    Explicit `kernel`/`bias` values are not carried (a Keras config never holds weights); the
    layer's initializers are written instead. A leaky_relu/elu with a non-default alpha on a Dense
    layer becomes that Dense (linear) followed by a LeakyReLU/ELU layer, since Keras' activation
    strings can't carry a slope: same parameters, same outputs.
    """
    spec = network if isinstance(network, NetworkSpec) else NetworkSpec.model_validate(network)
    width = spec.input_dim
    taken = set(spec.layer_names())
    # a category_encoding network reads integer token ids: (batch, length) documents, or
    # (batch, 1) for one_hot, as keras.Input((None,), dtype="int64")
    encoding = spec.encoding
    input_shape: list[int | None] = (
        [None, width]
        if encoding is None
        else [None, 1 if encoding.output_mode == "one_hot" else None]
    )
    layers: list[dict[str, Any]] = [
        _obj(
            "keras.layers",
            "InputLayer",
            {
                "batch_shape": input_shape,
                "dtype": "float32" if encoding is None else "int64",
                "sparse": False,
                "ragged": False,
                "name": "input_layer",
                "optional": False,
            },
        )
    ]
    for layer_name, layer in zip(spec.layer_names(), spec.layers, strict=True):
        if isinstance(layer, Dense):
            split = layer.activation in DEFAULT_ALPHA and layer.alpha not in (
                None,
                DEFAULT_ALPHA[layer.activation],
            )
            config = {
                **_base(layer_name),
                "units": layer.units,
                "activation": "linear" if split else layer.activation,
                "use_bias": layer.use_bias,
                "kernel_initializer": _init_obj(layer.kernel_initializer),
                "bias_initializer": _init_obj(layer.bias_initializer),
                "kernel_regularizer": _reg_obj(layer.kernel_regularizer),
                "bias_regularizer": _reg_obj(layer.bias_regularizer),
                "kernel_constraint": None,
                "bias_constraint": None,
                "quantization_config": None,
            }
            layers.append(_layer("Dense", config, width))
            if split:
                act_name = f"{layer_name}_{layer.activation}"
                while act_name in taken:
                    act_name += "_"
                taken.add(act_name)
                layers.append(_activation_entries(act_name, layer.activation, layer.alpha))
            width = layer.units
        elif isinstance(layer, Dropout):
            config = {**_base(layer_name), "rate": layer.rate, "seed": None, "noise_shape": None}
            layers.append(_layer("Dropout", config, None))
        elif isinstance(layer, Activation):
            layers.append(
                _activation_entries(layer_name, layer.activation, layer.alpha, layer.keras_class)
            )
        elif isinstance(layer, BatchNormalization):
            config = {
                **_base(layer_name), "axis": -1, "momentum": layer.momentum,
                "epsilon": layer.epsilon, "center": True, "scale": True,
                "beta_initializer": _init_obj("zeros"), "gamma_initializer": _init_obj("ones"),
                "moving_mean_initializer": _init_obj("zeros"),
                "moving_variance_initializer": _init_obj("ones"),
                "beta_regularizer": None, "gamma_regularizer": None,
                "beta_constraint": None, "gamma_constraint": None,
                "synchronized": False, "renorm": False,
                "renorm_clipping": None, "renorm_momentum": 0.99,
            }  # fmt: skip
            layers.append(_layer("BatchNormalization", config, width))
        elif isinstance(layer, LayerNormalization):
            config = {
                **_base(layer_name), "axis": [-1], "epsilon": layer.epsilon, "center": True,
                "scale": True, "rms_scaling": False,
                "beta_initializer": _init_obj("zeros"), "gamma_initializer": _init_obj("ones"),
                "beta_regularizer": None, "gamma_regularizer": None,
                "beta_constraint": None, "gamma_constraint": None,
            }  # fmt: skip
            layers.append(_layer("LayerNormalization", config, width))
        elif isinstance(layer, CategoryEncoding):
            config = {**_base(layer_name), "num_tokens": layer.num_tokens,
                      "output_mode": layer.output_mode, "sparse": False}  # fmt: skip
            layers.append(_layer("CategoryEncoding", config, None))
    body = {"name": name, "trainable": True, "dtype": _FLOAT32, "layers": layers,
            "build_input_shape": input_shape}  # fmt: skip
    return {**_obj("keras", "Sequential", body), "build_config": {"input_shape": input_shape}}


def to_keras_json(network: NetworkSpec | dict[str, Any], *, name: str = "sequential") -> str:
    """The spec as a Keras `model.to_json()` string (load with keras.models.model_from_json)."""
    return json.dumps(to_keras_config(network, name=name))
