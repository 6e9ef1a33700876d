"""Keras' named objects -> fitserve names: activations, initializers, regularizers.

Shared by the Keras JSON import (models/keras_json.py) and export (models/keras_export.py): the
tables say which Keras objects fitserve reproduces exactly, and with which arguments.
"""

from __future__ import annotations

import math
from typing import Any

from models.errors import SpecError
from models.spec import Dense

Loc = tuple[str | int, ...]

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
DEFAULT_ALPHA = {"leaky_relu": 0.2, "elu": 1.0}  # keras.activations defaults, as models/layers.py


def as_config(value: Any, loc: Loc) -> dict[str, Any]:
    """A config object; null reads as empty, anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"expected a config object here, got {type(value).__name__}", loc=loc)
    return value


def class_name(value: Any) -> str | None:
    """A class_name as a string; other JSON (a list, an object) can't name anything we know."""
    return value if isinstance(value, str) else None


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, type(None)))


def parse_activation(value: Any, keras2: bool, loc: Loc) -> str:
    """A Keras activation (a name, or Keras 3's serialized built-in function) -> fitserve's name."""
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


def parse_initializer(value: Any, loc: Loc) -> str:
    """A Keras initializer (name or {class_name, config}) -> fitserve's initializer name."""
    if isinstance(value, str):
        value = {"class_name": INITIALIZER_CLASS.get(value, value), "config": {}}
    if not isinstance(value, dict):
        raise SpecError(f"initializer {value!r} is not supported", loc=loc)
    cls, config = class_name(value.get("class_name")), dict(as_config(value.get("config"), loc))
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


def parse_regularizer(value: Any, loc: Loc) -> dict[str, float] | None:
    """A Keras L1/L2/L1L2 regularizer -> fitserve's {"l1", "l2"}; None when it adds nothing."""
    if value is None:
        return None
    if value in ("l1", "l2"):  # keras.regularizers.get("l2") is L2(0.01)
        return {value: 0.01}
    cls = class_name(value.get("class_name")) if isinstance(value, dict) else None
    keys = {"L1L2": ("l1", "l2"), "L1": ("l1",), "L2": ("l2",)}.get(cls)  # type: ignore[arg-type]
    if keys is None:
        raise SpecError(
            f"regularizer {cls or value!r} is not supported; use L1, L2 or L1L2", loc=loc
        )
    config = as_config(value.get("config"), loc)
    out = {}
    for key, v in config.items():
        if key not in keys or isinstance(v, bool) or not isinstance(v, (int, float, type(None))):
            raise SpecError(f"{cls} option {key}={v!r} is not supported", loc=(*loc, "config", key))
        if v:
            out[key] = float(v)
    return out or None
