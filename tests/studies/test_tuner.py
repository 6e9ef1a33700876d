"""The tuner asked over replayed rows, as the worker asks it epoch by epoch (no database)."""

from __future__ import annotations

import random

import pytest

from app.studies.space import parse_space
from app.studies.tuner import StudyPlan, TrialRecord, ask, should_prune

EPOCHS = 27


def _run(pruner: str, *, keep_notes: bool = True) -> tuple[list[TrialRecord], int]:
    """30 trials whose curves are q + 1/epoch for a random quality q, judged after every epoch;
    the pruner's notes carried from one epoch's replay to the next as the rows carry them."""
    plan = StudyPlan("s", parse_space({"training.batch_size": {"int": [1, 100]}}), "minimize",
                     "random", pruner, 1, EPOCHS)  # fmt: skip
    rng = random.Random(0)
    trials: list[TrialRecord] = []
    epochs = 0
    for number in range(30):
        params, _ = ask(plan, trials)
        quality = rng.random()
        trial = TrialRecord(number, params, "running")
        trials.append(trial)
        for epoch in range(1, EPOCHS + 1):
            trial.intermediate[epoch] = quality + 1.0 / epoch
            epochs += 1
            prune, noted = should_prune(plan, trials, number)
            if keep_notes:
                trial.pruner_attrs = noted
            if prune:
                trial.state, trial.value = "pruned", trial.intermediate[epoch]
                break
        else:
            trial.state, trial.value = "complete", trial.intermediate[EPOCHS]
    return trials, epochs


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_each_pruner_stops_losers_and_keeps_the_best(pruner: str) -> None:
    unpruned, all_epochs = _run("none")
    trials, epochs = _run(pruner)
    assert sum(t.state == "pruned" for t in trials) >= 10
    assert epochs < 0.7 * all_epochs
    best = min(t.value for t in unpruned if t.value is not None)
    assert min(t.value for t in trials if t.state == "complete" and t.value) == best


def test_rung_based_pruners_need_the_notes_the_rows_keep() -> None:
    # Successive halving judges a trial against the values others had at each rung, which it
    # notes on them; a replay without those notes has nothing to compare and prunes nothing.
    trials, _ = _run("successive_halving", keep_notes=False)
    assert all(t.state == "complete" for t in trials)
    noted, _ = _run("successive_halving")
    assert any("completed_rung_0" in t.pruner_attrs for t in noted)
