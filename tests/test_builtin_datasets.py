"""The built-in CSVs ship in the fixed shuffled order app/data/shuffle.py reproduces, so a
Keras-style validation_split (the last rows) sees every class."""

from __future__ import annotations

import numpy as np
import pytest

from app.csv_ingest import parse_csv
from app.data import BUILTINS
from app.data.shuffle import main as shuffle_main
from models.training_spec import split_rows


def test_the_shipped_files_are_in_the_documented_order() -> None:
    assert shuffle_main(["--check"]) == 0


@pytest.mark.parametrize("name", [n for n, b in BUILTINS.items() if b.task == "classification"])
def test_a_validation_split_of_a_builtin_holds_every_class(name: str) -> None:
    builtin = BUILTINS[name]
    data = parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)
    y = np.asarray(data.y)
    n_train = split_rows(len(y), 0.2)
    assert set(y[:n_train].tolist()) == set(y[n_train:].tolist()) == set(y.tolist())
