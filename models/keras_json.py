"""Keras Sequential JSON (`model.to_json()`) <-> NetworkSpec.

`from_keras_json` reads what Keras 3 writes (and the Keras 2 layout: `batch_input_shape` on the
first layer, plain-string dtypes); `models/keras_export.py: to_keras_json` writes Keras 3's layout
back. Like `to_json()` itself, neither carries weights.

Import is strict: a layer, option, initializer or regularizer that fitserve can't reproduce
exactly raises SpecError naming it and listing what is supported, rather than building a network
that quietly differs from the Keras one. Options set to null are "off" in every Keras version and
are skipped, so a config from a newer Keras that only adds null options still imports.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import ValidationError

from models.errors import SpecError
from models.keras_objects import (
    Loc,
    as_config,
    class_name,
    parse_activation,
    parse_initializer,
    parse_regularizer,
)
from models.spec import NetworkSpec

# A 100-layer config is ~100 kB of JSON; anything far larger is not a Sequential MLP config.
MAX_JSON_BYTES = 2_000_000

SUPPORTED_LAYERS = (
    "InputLayer",
    "Dense",
    "Dropout",
    "Activation",
    "BatchNormalization",
    "LayerNormalization",
    "LeakyReLU",
    "ReLU",
    "ELU",
    "Softmax",
    "CategoryEncoding",
)
_LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


# ---------------------------------------------------------------- import


def from_keras_json(source: str | bytes | dict[str, Any]) -> NetworkSpec:
    """A NetworkSpec from a Keras Sequential `model.to_json()` string (or its parsed dict)."""
    config = _parse(source)
    if not isinstance(config, dict):
        raise SpecError("a Keras model JSON is an object with class_name and config", loc=())
    cls = config.get("class_name")
    if cls != "Sequential":
        raise SpecError(
            f"only keras.Sequential models import; this is a {cls!r} model. Rebuild it as "
            "keras.Sequential([keras.Input((n,)), Dense(...), ...]) and call to_json() again",
            loc=("class_name",),
        )
    body = config.get("config")
    # Keras 1 and early Keras 2 wrote the layer list directly as config
    layers = body if isinstance(body, list) else as_config(body, ("config",)).get("layers")
    if not isinstance(layers, list):
        raise SpecError("the Sequential config has no layers list", loc=("config", "layers"))
    keras2 = str(config.get("keras_version", "")).startswith(("1.", "2."))

    input_dim = (
        None
        if _starts_with_encoding(layers)
        else _input_width(config, body if isinstance(body, dict) else {}, layers)
    )
    specs: list[dict[str, Any]] = []
    for i, entry in enumerate(layers):
        loc: Loc = ("config", "layers", i)
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise SpecError("each layer is an object with class_name and config", loc=loc)
        layer_cls = class_name(entry.get("class_name")) or ""
        if layer_cls == "InputLayer":
            continue
        convert = _CONVERTERS.get(layer_cls)
        if convert is None:
            raise SpecError(
                f"layer {entry.get('class_name')!r} ({entry['config'].get('name', '?')}) is not "
                f"supported; fitserve imports {', '.join(SUPPORTED_LAYERS)}",
                loc=(*loc, "class_name"),
            )
        options = dict(entry["config"])
        spec = _common(options, layer_cls, (*loc, "config"))
        spec.update(convert(options, (*loc, "config"), keras2))
        _reject_leftovers(options, layer_cls, (*loc, "config"))
        specs.append(spec)
    if not specs:
        raise SpecError(
            "the Sequential model has no layers after its input", loc=("config", "layers")
        )
    if input_dim is not None:
        specs[0]["input_dim"] = input_dim
    try:
        return NetworkSpec.model_validate({"layers": specs})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SpecError(
            f"the imported network is not valid at {where}: {err['msg']}", loc=("config", "layers")
        ) from None


def _parse(source: str | bytes | dict[str, Any]) -> Any:
    if isinstance(source, dict):
        return source
    if len(source) > MAX_JSON_BYTES:
        raise SpecError(
            f"the Keras JSON is over {MAX_JSON_BYTES:,} bytes; a Sequential config is far smaller"
        )
    try:
        return json.loads(source)
    except (ValueError, RecursionError) as exc:
        raise SpecError(
            f"the Keras model is not valid JSON ({exc}); pass model.to_json() as is"
        ) from None


def _shape_width(shape: Any, loc: Loc) -> int:
    if not isinstance(shape, list) or len(shape) != 2 or not _is_int(shape[1]):
        raise SpecError(
            f"input shape {shape} is not (batch, features): fitserve networks take flat feature "
            "vectors, keras.Input((n,))",
            loc=loc,
        )
    return shape[1]


def _input_width(config: dict[str, Any], body: dict[str, Any], layers: list[Any]) -> int:
    """The feature count, from wherever this Keras version wrote it."""
    for i, entry in enumerate(layers[:1]):
        cfg = entry.get("config") if isinstance(entry, dict) else None
        cfg = cfg if isinstance(cfg, dict) else {}
        for key in ("batch_shape", "batch_input_shape"):  # InputLayer (Keras 3) / first layer (2)
            if cfg.get(key) is not None:
                return _shape_width(cfg[key], ("config", "layers", i, "config", key))
    if body.get("build_input_shape") is not None:
        return _shape_width(body["build_input_shape"], ("config", "build_input_shape"))
    build = config.get("build_config") or {}
    if isinstance(build, dict) and build.get("input_shape") is not None:
        return _shape_width(build["input_shape"], ("build_config", "input_shape"))
    raise SpecError(
        "the Keras config doesn't say how many input features the model takes; build it with "
        "keras.Input((n,)) as its first layer before calling to_json()",
        loc=("config", "layers", 0),
    )


def _starts_with_encoding(layers: list[Any]) -> bool:
    """True when the first layer after the input is CategoryEncoding: the model reads token ids
    (keras.Input((None,), dtype="int64")), so there is no feature width to read."""
    for entry in layers:
        name = class_name(entry.get("class_name")) if isinstance(entry, dict) else None
        if name != "InputLayer":
            return name == "CategoryEncoding"
    return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(options: dict[str, Any], key: str, default: float, loc: Loc) -> float:
    v = options.pop(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{key} must be a number, got {v!r}", loc=(*loc, key))
    return float(v)


def _require(
    options: dict[str, Any], key: str, expected: Any, layer: str, loc: Loc, why: str
) -> None:
    v = options.pop(key, expected)
    if v != expected:
        raise SpecError(f"{layer} option {key}={v!r} is not supported: {why}", loc=(*loc, key))


def _common(options: dict[str, Any], layer: str, loc: Loc) -> dict[str, Any]:
    """name, trainable, dtype and input-shape keys every layer config carries."""
    spec: dict[str, Any] = {}
    name = options.pop("name", None)
    if isinstance(name, str) and _LAYER_NAME.match(name):
        spec["name"] = name  # names only label the summary: a name fitserve can't hold is dropped
    _require(
        options, "trainable", True, layer, loc, "fitserve trains every layer (no frozen layers)"
    )
    dtype = options.pop("dtype", None)
    if isinstance(dtype, dict):
        dtype = as_config(dtype.get("config"), (*loc, "dtype", "config")).get("name")
    if dtype not in (None, "float32"):
        raise SpecError(
            f"{layer} dtype {dtype!r} is not supported: fitserve builds float32 networks; for "
            'mixed precision on CUDA set training.precision to "bf16"',
            loc=(*loc, "dtype"),
        )
    for key in ("batch_input_shape", "batch_size", "input_dim"):
        options.pop(key, None)  # read by _input_width
    return spec


def _reject_leftovers(options: dict[str, Any], layer: str, loc: Loc) -> None:
    for key, value in options.items():
        if value is not None:
            shown = value.get("class_name", value) if isinstance(value, dict) else value
            raise SpecError(
                f"{layer} option {key}={shown!r} is not supported by fitserve; remove it (or set "
                "it to its default) in the Keras model",
                loc=(*loc, key),
            )


def _dense(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    if options.get("lora_rank") is None:
        options.pop("lora_alpha", None)  # only read when LoRA is on
    spec: dict[str, Any] = {"type": "dense"}
    if not _is_int(options.get("units")):
        raise SpecError("Dense needs integer units", loc=(*loc, "units"))
    spec["units"] = options.pop("units")
    spec["activation"] = parse_activation(
        options.pop("activation", "linear") or "linear", keras2, (*loc, "activation")
    )
    use_bias = options.pop("use_bias", True)
    if not isinstance(use_bias, bool):
        raise SpecError("use_bias must be true or false", loc=(*loc, "use_bias"))
    spec["use_bias"] = use_bias
    for key in ("kernel_initializer", "bias_initializer"):
        if options.get(key) is not None:
            spec[key] = parse_initializer(options.pop(key), (*loc, key))
    for key in ("kernel_regularizer", "bias_regularizer"):
        reg = parse_regularizer(options.pop(key, None), (*loc, key))
        if reg is not None:
            spec[key] = reg
    return spec


def _dropout(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    options.pop("seed", None)  # fitserve seeds dropout from training.seed
    return {"type": "dropout", "rate": _number(options, "rate", 0.0, loc)}


def _activation_layer(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    name = parse_activation(options.pop("activation", None), keras2, (*loc, "activation"))
    return {"type": "activation", "activation": name}


def _leaky_relu(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    if "alpha" in options:  # Keras 2 spelling
        options["negative_slope"] = options.pop("alpha")
    alpha = _number(options, "negative_slope", 0.3, loc)  # keras.layers.LeakyReLU default
    return {"type": "activation", "activation": "leaky_relu", "alpha": alpha,
            "keras_class": "LeakyReLU"}  # fmt: skip


def _relu(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    max_value = options.pop("max_value", None)
    slope = _number(options, "negative_slope", 0.0, loc)
    _require(options, "threshold", 0.0, "ReLU", loc, "fitserve's relu thresholds at 0")
    relu = {"type": "activation", "keras_class": "ReLU"}
    if max_value is None and slope == 0:
        return {**relu, "activation": "relu"}
    if max_value is None:
        return {**relu, "activation": "leaky_relu", "alpha": slope}
    if max_value == 6 and slope == 0:
        return {**relu, "activation": "relu6"}
    raise SpecError(
        f"ReLU(max_value={max_value}, negative_slope={slope}) is not supported; fitserve has "
        "ReLU(), ReLU(max_value=6) and ReLU(negative_slope=a)",
        loc=loc,
    )


def _elu(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    alpha = _number(options, "alpha", 1.0, loc)
    return {"type": "activation", "activation": "elu", "alpha": alpha, "keras_class": "ELU"}


def _softmax(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    _require(options, "axis", -1, "Softmax", loc, "fitserve's softmax is over the features (-1)")
    return {"type": "activation", "activation": "softmax", "keras_class": "Softmax"}


def _feature_axis(options: dict[str, Any], layer: str, loc: Loc) -> None:
    axis = options.pop("axis", -1)
    if axis not in (-1, 1, [-1], [1]):
        raise SpecError(
            f"{layer} axis={axis!r} is not supported: fitserve normalizes over the features "
            "(axis -1)",
            loc=(*loc, "axis"),
        )


def _normalization_defaults(
    options: dict[str, Any], layer: str, loc: Loc, initializers: dict[str, str]
) -> None:
    why = "fitserve's layer always has a learned scale and offset"
    _require(options, "center", True, layer, loc, why)
    _require(options, "scale", True, layer, loc, why)
    for key, expected in initializers.items():
        if (
            options.get(key) is not None
            and parse_initializer(options.pop(key), (*loc, key)) != expected
        ):
            raise SpecError(
                f"{layer} {key} is not supported: fitserve starts it at {expected}", loc=(*loc, key)
            )


def _batch_normalization(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    _feature_axis(options, "BatchNormalization", loc)
    _normalization_defaults(
        options,
        "BatchNormalization",
        loc,
        {
            "beta_initializer": "zeros",
            "gamma_initializer": "ones",
            "moving_mean_initializer": "zeros",
            "moving_variance_initializer": "ones",
        },
    )
    _require(
        options,
        "renorm",
        False,
        "BatchNormalization",
        loc,
        "batch renormalization is not implemented",
    )
    for key in ("synchronized", "fused", "renorm_momentum", "renorm_clipping"):
        options.pop(key, None)  # multi-device and kernel-choice flags; no effect on the maths
    return {
        "type": "batch_normalization",
        "momentum": _number(options, "momentum", 0.99, loc),
        "epsilon": _number(options, "epsilon", 1e-3, loc),
    }


def _layer_normalization(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    _feature_axis(options, "LayerNormalization", loc)
    _normalization_defaults(
        options,
        "LayerNormalization",
        loc,
        {"beta_initializer": "zeros", "gamma_initializer": "ones"},
    )
    _require(
        options, "rms_scaling", False, "LayerNormalization", loc, "RMS scaling is not implemented"
    )
    return {"type": "layer_normalization", "epsilon": _number(options, "epsilon", 1e-3, loc)}


def _category_encoding(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    num_tokens = options.pop("num_tokens", None)
    if not _is_int(num_tokens):
        raise SpecError("CategoryEncoding needs integer num_tokens", loc=(*loc, "num_tokens"))
    mode = options.pop("output_mode", "multi_hot")
    mode = "multi_hot" if mode == "binary" else mode  # Keras' deprecated name for multi_hot
    if mode not in ("multi_hot", "count", "one_hot"):
        raise SpecError(
            f"CategoryEncoding output_mode {mode!r} is not supported; use multi_hot, count or "
            "one_hot",
            loc=(*loc, "output_mode"),
        )
    _require(
        options,
        "sparse",
        False,
        "CategoryEncoding",
        loc,
        "fitserve encodes each batch into a dense vector",
    )
    return {"type": "category_encoding", "num_tokens": num_tokens, "output_mode": mode}


_CONVERTERS = {
    "Dense": _dense,
    "Dropout": _dropout,
    "Activation": _activation_layer,
    "BatchNormalization": _batch_normalization,
    "LayerNormalization": _layer_normalization,
    "LeakyReLU": _leaky_relu,
    "ReLU": _relu,
    "ELU": _elu,
    "Softmax": _softmax,
    "CategoryEncoding": _category_encoding,
}
