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
from models.spec import (
    Dense,
    NetworkSpec,
)

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
)
SUPPORTED_ACTIVATIONS = tuple(
    Dense.model_fields["activation"].annotation.__args__  # type: ignore[union-attr]
)

# Keras class name -> fitserve initializer name, and the config values fitserve reproduces.
KERAS_INITIALIZERS: dict[str, tuple[str, dict[str, float]]] = {
    "GlorotUniform": ("glorot_uniform", {}),
    "GlorotNormal": ("glorot_normal", {}),
    "HeUniform": ("he_uniform", {}),
    "HeNormal": ("he_normal", {}),
    "LecunUniform": ("lecun_uniform", {}),
    "LecunNormal": ("lecun_normal", {}),
    "Orthogonal": ("orthogonal", {"gain": 1.0}),
    "Zeros": ("zeros", {}),
    "Ones": ("ones", {}),
    "RandomNormal": ("random_normal", {"mean": 0.0, "stddev": 0.05}),
    "RandomUniform": ("random_uniform", {"minval": -0.05, "maxval": 0.05}),
    "TruncatedNormal": ("truncated_normal", {"mean": 0.0, "stddev": 0.05}),
}
INITIALIZER_CLASS = {name: cls for cls, (name, _) in KERAS_INITIALIZERS.items()}
# keras.initializers.VarianceScaling(scale, mode, distribution) spelled as the named ones
_VARIANCE_SCALING = {
    (1.0, "fan_avg", "uniform"): "glorot_uniform",
    (1.0, "fan_avg", "truncated_normal"): "glorot_normal",
    (2.0, "fan_in", "uniform"): "he_uniform",
    (2.0, "fan_in", "truncated_normal"): "he_normal",
    (1.0, "fan_in", "uniform"): "lecun_uniform",
    (1.0, "fan_in", "truncated_normal"): "lecun_normal",
}
_LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
DEFAULT_ALPHA = {"leaky_relu": 0.2, "elu": 1.0}  # keras.activations defaults, as models/layers.py

Loc = tuple[str | int, ...]


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
    layers = body if isinstance(body, list) else _dict(body, ("config",)).get("layers")
    if not isinstance(layers, list):
        raise SpecError("the Sequential config has no layers list", loc=("config", "layers"))
    keras2 = str(config.get("keras_version", "")).startswith(("1.", "2."))

    input_dim = _input_width(config, body if isinstance(body, dict) else {}, layers)
    specs: list[dict[str, Any]] = []
    for i, entry in enumerate(layers):
        loc: Loc = ("config", "layers", i)
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise SpecError("each layer is an object with class_name and config", loc=loc)
        layer_cls = _name(entry.get("class_name")) or ""
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


def _dict(value: Any, loc: Loc) -> dict[str, Any]:
    """A config object; null reads as empty, anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"expected a config object here, got {type(value).__name__}", loc=loc)
    return value


def _name(value: Any) -> str | None:
    """A class_name as a string; other JSON (a list, an object) can't name anything we know."""
    return value if isinstance(value, str) else None


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, type(None)))


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
        dtype = _dict(dtype.get("config"), (*loc, "dtype", "config")).get("name")
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


def _activation(value: Any, keras2: bool, loc: Loc) -> str:
    if isinstance(value, dict) and value.get("module") in (
        "keras.activations",
        "keras.src.activations",
    ):
        value = value.get("config")  # Keras 3 writes built-ins passed as functions this way
    if not isinstance(value, str) or value not in SUPPORTED_ACTIVATIONS:
        raise SpecError(
            f"activation {value!r} is not supported; use one of {', '.join(SUPPORTED_ACTIVATIONS)}",
            loc=loc,
        )
    if keras2 and value == "hard_sigmoid":
        raise SpecError(
            "Keras 2's hard_sigmoid is 0.2x + 0.5, fitserve's is Keras 3's relu6(x + 3) / 6; "
            "use sigmoid or re-save the model with Keras 3",
            loc=loc,
        )
    return value


def _initializer(value: Any, loc: Loc) -> str:
    if isinstance(value, str):
        value = {"class_name": INITIALIZER_CLASS.get(value, value), "config": {}}
    if not isinstance(value, dict):
        raise SpecError(f"initializer {value!r} is not supported", loc=loc)
    cls, config = _name(value.get("class_name")), dict(_dict(value.get("config"), loc))
    config.pop("seed", None)  # fitserve seeds every initializer from training.seed
    for key in ("input_axes", "output_axes"):
        if config.pop(key, None) is not None:
            raise SpecError(f"initializer option {key} is not supported", loc=(*loc, "config", key))
    if cls == "VarianceScaling":
        key3 = (config.get("scale", 1.0), config.get("mode", "fan_in"), config.get("distribution"))
        hashable = all(map(_hashable, key3))
        named = _VARIANCE_SCALING.get(key3) if hashable else None  # type: ignore[arg-type]
        if named is None:
            raise SpecError(
                f"VarianceScaling{key3} has no fitserve equivalent; fitserve has the Glorot, He, "
                "LeCun variants (scale 1 fan_avg, 2 fan_in, 1 fan_in; uniform or truncated_normal)",
                loc=loc,
            )
        return named
    if cls == "Constant" and config.get("value") in (0, 1):
        return "zeros" if config["value"] == 0 else "ones"
    if cls not in KERAS_INITIALIZERS:
        raise SpecError(
            f"initializer {cls!r} is not supported; use one of {', '.join(KERAS_INITIALIZERS)} "
            "(or VarianceScaling in one of their forms)",
            loc=loc,
        )
    name, defaults = KERAS_INITIALIZERS[cls]
    for key, v in config.items():
        if (
            key not in defaults
            or not isinstance(v, (int, float))
            or not math.isclose(v, defaults[key])
        ):
            raise SpecError(
                f"{cls} with {key}={v!r} is not supported; fitserve's {name} is Keras' default "
                f"{cls}({', '.join(f'{k}={d}' for k, d in defaults.items())})",
                loc=(*loc, "config", key),
            )
    return name


def _regularizer(value: Any, loc: Loc) -> dict[str, float] | None:
    if value is None:
        return None
    if value in ("l1", "l2"):  # keras.regularizers.get("l2") is L2(0.01)
        return {value: 0.01}
    cls = _name(value.get("class_name")) if isinstance(value, dict) else None
    keys = {"L1L2": ("l1", "l2"), "L1": ("l1",), "L2": ("l2",)}.get(cls)  # type: ignore[arg-type]
    if keys is None:
        raise SpecError(
            f"regularizer {cls or value!r} is not supported; use L1, L2 or L1L2", loc=loc
        )
    config = _dict(value.get("config"), loc)
    out = {}
    for key, v in config.items():
        if key not in keys or isinstance(v, bool) or not isinstance(v, (int, float, type(None))):
            raise SpecError(f"{cls} option {key}={v!r} is not supported", loc=(*loc, "config", key))
        if v:
            out[key] = float(v)
    return out or None


def _dense(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    if options.get("lora_rank") is None:
        options.pop("lora_alpha", None)  # only read when LoRA is on
    spec: dict[str, Any] = {"type": "dense"}
    if not _is_int(options.get("units")):
        raise SpecError("Dense needs integer units", loc=(*loc, "units"))
    spec["units"] = options.pop("units")
    spec["activation"] = _activation(
        options.pop("activation", "linear") or "linear", keras2, (*loc, "activation")
    )
    use_bias = options.pop("use_bias", True)
    if not isinstance(use_bias, bool):
        raise SpecError("use_bias must be true or false", loc=(*loc, "use_bias"))
    spec["use_bias"] = use_bias
    for key in ("kernel_initializer", "bias_initializer"):
        if options.get(key) is not None:
            spec[key] = _initializer(options.pop(key), (*loc, key))
    for key in ("kernel_regularizer", "bias_regularizer"):
        reg = _regularizer(options.pop(key, None), (*loc, key))
        if reg is not None:
            spec[key] = reg
    return spec


def _dropout(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    options.pop("seed", None)  # fitserve seeds dropout from training.seed
    return {"type": "dropout", "rate": _number(options, "rate", 0.0, loc)}


def _activation_layer(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    name = _activation(options.pop("activation", None), keras2, (*loc, "activation"))
    return {"type": "activation", "activation": name}


def _leaky_relu(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    if "alpha" in options:  # Keras 2 spelling
        options["negative_slope"] = options.pop("alpha")
    alpha = _number(options, "negative_slope", 0.3, loc)  # keras.layers.LeakyReLU default
    return {"type": "activation", "activation": "leaky_relu", "alpha": alpha}


def _relu(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    max_value = options.pop("max_value", None)
    slope = _number(options, "negative_slope", 0.0, loc)
    _require(options, "threshold", 0.0, "ReLU", loc, "fitserve's relu thresholds at 0")
    if max_value is None and slope == 0:
        return {"type": "activation", "activation": "relu"}
    if max_value is None:
        return {"type": "activation", "activation": "leaky_relu", "alpha": slope}
    if max_value == 6 and slope == 0:
        return {"type": "activation", "activation": "relu6"}
    raise SpecError(
        f"ReLU(max_value={max_value}, negative_slope={slope}) is not supported; fitserve has "
        "ReLU(), ReLU(max_value=6) and ReLU(negative_slope=a)",
        loc=loc,
    )


def _elu(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    return {"type": "activation", "activation": "elu", "alpha": _number(options, "alpha", 1.0, loc)}


def _softmax(options: dict[str, Any], loc: Loc, keras2: bool) -> dict[str, Any]:
    _require(options, "axis", -1, "Softmax", loc, "fitserve's softmax is over the features (-1)")
    return {"type": "activation", "activation": "softmax"}


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
        if options.get(key) is not None and _initializer(options.pop(key), (*loc, key)) != expected:
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
}
