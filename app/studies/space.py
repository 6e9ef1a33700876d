"""A study's search space: which fields of the job spec vary, over what, and how a sample is
written back into the spec.

A search space maps a *path* into the job's `{"network": ..., "training": ...}` document to a
*distribution*:

    "network.layers[0].units":          {"int": [4, 128], "log": true}
    "network.layers[1].rate":           {"float": [0.0, 0.6]}
    "training.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": true}
    "training.batch_size":              {"choice": [16, 32, 64, "full"]}

A path is `network` or `training` followed by `.field` and `[index]` steps. Every container on
the way must exist in the base spec (a layer index past the last layer is an error), with one
convenience: an optimizer given by name (`"optimizer": "adam"`) is expanded to its object form
when a path goes through it. The leaf itself may be absent (it then takes the sampled value
instead of its default). Whether the sampled value fits the field is decided by the spec's own
validation, run on the space's corners when the study is created.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

_STEP = re.compile(r"\.([a-z_][a-z0-9_]*)|\[(\d{1,4})\]")
_ROOTS = ("network", "training")
MAX_CHOICES = 100
MAX_GRID_POINTS = 10_000

Scalar = bool | int | float | str | None


class SpaceError(ValueError):
    """A search space that can't be sampled; `path` names the entry (None: the space itself)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


@dataclass(frozen=True)
class Dimension:
    """One searched field: `kind` int/float with bounds, or a choice among `choices`."""

    path: str
    steps: tuple[str | int, ...]
    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Scalar, ...] = ()

    def corners(self) -> list[Scalar]:
        """The values a sample can reach at its extremes: checked against the spec up front."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def grid(self) -> list[Scalar]:
        """Every value a grid search visits (choices, or each integer/step of a range)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            raise SpaceError(
                "a grid search needs finitely many values: give this float range a step "
                "or use a choice",
                self.path,
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [self.low + i * self.step for i in range(count)]


def parse_path(path: str) -> tuple[str | int, ...]:
    root, dot, rest = path.partition(".")
    if root not in _ROOTS or not dot:
        raise SpaceError(
            "a path starts with 'network.' or 'training.', for example "
            "'network.layers[0].units' or 'training.optimizer.learning_rate'",
            path,
        )
    steps: list[str | int] = [root]
    position = len(root)
    while position < len(path):
        match = _STEP.match(path, position)
        if match is None:
            raise SpaceError(
                f"can't read the path at {path[position:]!r}: write fields as '.name' and list "
                "items as '[index]'",
                path,
            )
        field, index = match.groups()
        steps.append(field if field is not None else int(index))
        position = match.end()
    return tuple(steps)


def _number(value: Any, path: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpaceError(f"{what} must be a finite number", path)
    return float(value)


def parse_dimension(path: str, raw: dict[str, Any]) -> Dimension:
    steps = parse_path(path)
    kinds = [k for k in ("int", "float", "choice") if k in raw]
    if len(kinds) != 1:
        raise SpaceError("give exactly one of 'int', 'float' or 'choice'", path)
    kind = kinds[0]
    extra = set(raw) - {kind, "log", "step"}
    if extra:
        raise SpaceError(f"unknown key(s) {sorted(extra)}: use int/float/choice, log, step", path)
    if kind == "choice":
        choices = raw["choice"]
        if set(raw) != {"choice"}:
            raise SpaceError("a choice takes no 'log' or 'step'", path)
        if not isinstance(choices, list) or not choices:
            raise SpaceError("a choice needs a non-empty list of values", path)
        if len(choices) > MAX_CHOICES:
            raise SpaceError(f"a choice has at most {MAX_CHOICES} values", path)
        for value in choices:
            if value is not None and not isinstance(value, bool | int | float | str):
                raise SpaceError("choice values are numbers, strings, booleans or null", path)
            if isinstance(value, float) and not math.isfinite(value):
                raise SpaceError("choice values must be finite", path)
        if len({repr(v) for v in choices}) != len(choices):
            raise SpaceError("a choice lists each value once", path)
        return Dimension(path, steps, "choice", choices=tuple(choices))
    bounds = raw[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SpaceError(f"'{kind}' takes [low, high]", path)
    low, high = (_number(b, path, f"{kind} bounds") for b in bounds)
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise SpaceError("an int range has integer bounds", path)
    if low > high:
        raise SpaceError(f"low ({low:g}) is above high ({high:g})", path)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError("'log' is true or false", path)
    if log and low <= 0:
        raise SpaceError("a log range needs low > 0", path)
    step = raw.get("step")
    if step is not None:
        step = _number(step, path, "step")
        if step <= 0:
            raise SpaceError("step must be positive", path)
        if log:
            raise SpaceError("give 'log' or 'step', not both", path)
        if kind == "int" and not step.is_integer():
            raise SpaceError("an int range has an integer step", path)
    return Dimension(path, steps, kind, low=low, high=high, log=log, step=step)


def parse_space(raw: dict[str, Any]) -> list[Dimension]:
    if not raw:
        raise SpaceError("name at least one field to search")
    dimensions = [parse_dimension(path, spec) for path, spec in raw.items()]
    seen: dict[tuple[str | int, ...], str] = {}
    for dim in dimensions:
        if dim.steps in seen:
            raise SpaceError(f"the same field as {seen[dim.steps]!r}", dim.path)
        seen[dim.steps] = dim.path
    return dimensions


def grid_points(dimensions: list[Dimension]) -> list[dict[str, Scalar]]:
    axes = [dim.grid() for dim in dimensions]
    if math.prod(len(axis) for axis in axes) > MAX_GRID_POINTS:
        raise SpaceError(f"the grid has more than {MAX_GRID_POINTS} points: search fewer values")
    return [
        {dim.path: value for dim, value in zip(dimensions, point, strict=True)}
        for point in itertools.product(*axes)
    ]


def apply(base: dict[str, Any], dimensions: list[Dimension], values: dict[str, Any]) -> dict:
    """A copy of `base` ({"network": ..., "training": ...}) with each dimension set to its value."""
    doc = copy.deepcopy(base)
    for dim in dimensions:
        _set(doc, dim, values[dim.path])
    return doc


def _set(doc: dict[str, Any], dim: Dimension, value: Any) -> None:
    node: Any = doc
    *parents, leaf = dim.steps
    trail = ""
    for position, step in enumerate(parents):
        child = _child(node, step, dim, trail)
        if step == "optimizer" and parents[position - 1] == "training" and isinstance(child, str):
            child = {"name": child}  # "adam" -> {"name": "adam"}: the path goes through it
            node[step] = child
        node = child
        trail += f"[{step}]" if isinstance(step, int) else f".{step}"
    if isinstance(leaf, int):
        if not isinstance(node, list) or leaf >= len(node):
            raise SpaceError(f"{trail.lstrip('.')} has no item [{leaf}]", dim.path)
    elif not isinstance(node, dict):
        raise SpaceError(f"{trail.lstrip('.')} is not an object with fields", dim.path)
    node[leaf] = value


def _child(node: Any, step: str | int, dim: Dimension, trail: str) -> Any:
    where = trail.lstrip(".") or "the spec"
    if isinstance(step, int):
        if not isinstance(node, list):
            raise SpaceError(f"{where} is not a list", dim.path)
        if step >= len(node):
            raise SpaceError(f"{where} has {len(node)} items: there is no [{step}]", dim.path)
        return node[step]
    if not isinstance(node, dict) or node.get(step) is None:
        raise SpaceError(
            f"{where} has no {step!r} in this study's spec: set it in the spec to search it",
            dim.path,
        )
    return node[step]
