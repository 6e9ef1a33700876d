"""docs/keras-defaults.md's first table is the truth about fitserve's defaults: checked here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from models import TrainingConfig
from models.layers import make_activation
from models.spec import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    BatchNormalization,
    Dense,
    EarlyStoppingConfig,
    LayerNormalization,
    RMSprop,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "keras-defaults.md"


def _rows() -> list[tuple[str, str]]:
    table = DOC.read_text().split("## Defaults", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        m = re.match(r"\|\s*`([\w.]+)`\s*\|[^|]*\|[^|]*\|\s*([^|]+?)\s*\|", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


def _parse(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if text == "(required)":
        return "(required)"
    if text == "null":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _field_default(model: type, name: str) -> Any:
    field = model.model_fields[name]  # type: ignore[attr-defined]
    return "(required)" if field.is_required() else field.default


ACTUAL: dict[str, Callable[[str], Any]] = {
    "training": lambda k: (
        TrainingConfig.model_validate({"loss": "mse"}).optimizer_config.name
        if k == "optimizer"
        else getattr(TrainingConfig.model_validate({"loss": "mse"}), k)
    ),
    "sgd": lambda k: getattr(SGD(name="sgd"), k),
    "adam": lambda k: getattr(Adam(name="adam"), k),
    "adamw": lambda k: getattr(AdamW(name="adamw"), k),
    "rmsprop": lambda k: getattr(RMSprop(name="rmsprop"), k),
    "adagrad": lambda k: getattr(Adagrad(name="adagrad"), k),
    "dense": lambda k: _field_default(Dense, k),
    "dropout": lambda k: _field_default(__import__("models.spec", fromlist=["Dropout"]).Dropout, k),
    "batch_normalization": lambda k: _field_default(BatchNormalization, k),
    "layer_normalization": lambda k: _field_default(LayerNormalization, k),
    "early_stopping": lambda k: getattr(EarlyStoppingConfig(), k),
    "leaky_relu": lambda k: make_activation("leaky_relu").negative_slope,  # type: ignore[union-attr]
    "elu": lambda k: make_activation("elu").alpha,  # type: ignore[union-attr]
    "huber": lambda k: _huber_delta(),
}


def _huber_delta() -> float:
    from models.losses import LOSSES

    # past delta, Huber's loss for an error e is delta * (e - delta / 2); solve for delta at e = 3
    loss = LOSSES["huber"](torch.tensor([3.0]), torch.tensor([0.0])).item()
    return 3.0 - (9.0 - 2.0 * loss) ** 0.5


ROWS = _rows()


def test_table_is_there() -> None:
    assert len(ROWS) >= 35
    assert {key.split(".")[0] for key, _ in ROWS} <= set(ACTUAL)


@pytest.mark.parametrize(("key", "documented"), ROWS, ids=[k for k, _ in ROWS])
def test_documented_default_is_the_code_default(key: str, documented: str) -> None:
    group, name = key.split(".", 1)
    actual = ACTUAL[group](name)
    expected = _parse(documented)
    if isinstance(expected, float) and not isinstance(actual, bool):
        assert actual == pytest.approx(expected)
    else:
        assert actual == expected
