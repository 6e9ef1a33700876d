"""Optuna's samplers and pruners, asked over state that lives in fitserve's own tables.

fitserve keeps a study's trials in its database (study_trials, and each trial's job and per-epoch
metrics); Optuna's own RDB storage is not used. Its tables would sit beside ours under a second
Alembic history (Optuna migrates its schema with Alembic too, on the same `alembic_version`
name), and its trial rows would be a second copy of what the job rows already say, kept in step
by hand. Instead every decision is made on an in-memory Optuna study rebuilt from our rows:

- `ask` replays the finished and running trials (params, value, per-epoch objective values, the
  grid point a grid search gave them) and asks the sampler for the next trial's params;
- `should_prune` replays the same and asks the pruner about one running trial at its latest epoch.

Both run inside the transaction that then writes the decision (with the study row locked), so a
trial is never sampled twice and two workers never disagree about a prune. Replaying is cheap
next to an epoch: a study of 100 trials x 100 epochs rebuilds in a few milliseconds.

Samplers are seeded from (study seed, trial number), so a study with a seed samples the same
params for the same history, whichever process asks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from numpy.random import SeedSequence
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from app.studies.space import Dimension, grid_points

optuna.logging.set_verbosity(optuna.logging.WARNING)

SamplerName = Literal["tpe", "random", "grid"]
PrunerName = Literal["median", "successive_halving", "hyperband", "none"]
Direction = Literal["minimize", "maximize"]
TrialStateName = Literal["running", "complete", "pruned", "failed", "cancelled"]

_STATES = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    # A trial the user stopped: its params were tried, nothing can be said of its value.
    "cancelled": TrialState.FAIL,
}


@dataclass(frozen=True)
class StudyPlan:
    """What the tuner needs of a study: its space, objective direction and algorithms."""

    study_id: str
    dimensions: list[Dimension]
    direction: Direction
    sampler: SamplerName
    pruner: PrunerName
    seed: int | None
    epochs: int


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    state: TrialStateName
    value: float | None = None
    # epoch -> the objective's value after it (Optuna's "intermediate values", step = epoch)
    intermediate: dict[int, float] = field(default_factory=dict)
    grid_id: int | None = None
    # the pruner's notes on the trial (Optuna system attrs such as completed_rung_0)
    pruner_attrs: dict[str, Any] = field(default_factory=dict)


def distribution(dim: Dimension) -> BaseDistribution:
    if dim.kind == "choice":
        return CategoricalDistribution(list(dim.choices))
    if dim.kind == "int":
        step = int(dim.step) if dim.step is not None else 1
        return IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=step)
    return FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)


def _sampler(plan: StudyPlan, number: int) -> optuna.samplers.BaseSampler:
    # SeedSequence mixes (seed, number) well: nearby integer seeds give correlated first draws.
    seed = (
        None if plan.seed is None else int(SeedSequence([plan.seed, number]).generate_state(1)[0])
    )
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if plan.sampler == "grid":
        # One seed for the whole study: the grid's visiting order is drawn from it, and grid ids
        # stored with earlier trials index into that order.
        return optuna.samplers.GridSampler(_grid_space(plan.dimensions), seed=plan.seed or 0)
    # constant_liar: running trials count as bad guesses, so parallel trials spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _grid_space(dimensions: list[Dimension]) -> dict[str, list[Any]]:
    return {dim.path: dim.grid() for dim in dimensions}


def grid_size(dimensions: list[Dimension]) -> int:
    return len(grid_points(dimensions))


def _pruner(plan: StudyPlan) -> optuna.pruners.BasePruner:
    if plan.pruner == "median":
        # Optuna's defaults: judge nothing until 5 trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if plan.pruner == "successive_halving":
        # min_resource 1 epoch, not "auto": auto is estimated from the finished trials, so it
        # could change as the study goes on and the stored rung values would stop matching.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(plan.epochs, 2))
    return optuna.pruners.NopPruner()


def _replay(plan: StudyPlan, trials: list[TrialRecord], *, number: int) -> optuna.Study:
    study = optuna.create_study(
        study_name=plan.study_id,
        direction=plan.direction,
        sampler=_sampler(plan, number),
        pruner=_pruner(plan),
    )
    distributions = {dim.path: distribution(dim) for dim in plan.dimensions}
    for trial in sorted(trials, key=lambda t: t.number):
        finished = trial.state in ("complete", "pruned")
        value = trial.value if finished and trial.value is not None else None
        state = _STATES[trial.state]
        if trial.state == "complete" and (value is None or math.isnan(value)):
            state = TrialState.FAIL  # a finished job without a finite objective
            value = None
        system_attrs: dict[str, Any] = dict(trial.pruner_attrs)
        if trial.grid_id is not None:
            system_attrs["grid_id"] = trial.grid_id
        if plan.sampler == "grid" and trial.grid_id is not None:
            system_attrs["search_space"] = _grid_space(plan.dimensions)
        study.add_trial(
            create_trial(
                state=state,
                value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                params=trial.params,
                distributions=distributions,
                intermediate_values={
                    k: v for k, v in trial.intermediate.items() if not math.isnan(v)
                },
                system_attrs=system_attrs,
            )
        )
    return study


def ask(plan: StudyPlan, trials: list[TrialRecord]) -> tuple[dict[str, Any], int | None]:
    """The next trial's params (path -> value) and, for a grid search, its grid point."""
    number = len(trials)
    study = _replay(plan, trials, number=number)
    distributions = {dim.path: distribution(dim) for dim in plan.dimensions}
    trial = study.ask(distributions)
    grid_id = study._storage.get_trial_system_attrs(trial._trial_id).get("grid_id")
    return dict(trial.params), grid_id


def should_prune(
    plan: StudyPlan, trials: list[TrialRecord], number: int
) -> tuple[bool, dict[str, Any]]:
    """Whether the running trial `number`, with the epochs it has reported, should stop now;
    and what the pruner noted on it while deciding (to be stored with the trial)."""
    record = next(t for t in trials if t.number == number)
    if plan.pruner == "none":
        return False, record.pruner_attrs
    study = _replay(plan, trials, number=len(trials))
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if frozen.last_step is None:
        return False, record.pruner_attrs
    prune = bool(study.pruner.prune(study, frozen))
    attrs = study._storage.get_trial_system_attrs(frozen._trial_id)
    noted = {k: v for k, v in attrs.items() if k not in ("grid_id", "search_space")}
    return prune, noted
