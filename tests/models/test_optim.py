"""The optimizers' mechanics. Their update rules are checked against Keras itself, live, in
tests/interop/test_keras_parity.py; here: state, checkpoints and the step's bookkeeping."""

from __future__ import annotations

import copy

import pytest
import torch

from models.errors import SpecError
from models.optim import make_optimizer
from models.spec import TrainingConfig


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(3))]


def _optimizer(spec: object, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    config = TrainingConfig.model_validate({"loss": "mse", "optimizer": spec})
    return make_optimizer(config.optimizer_config, params)


def _steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


SPECS = [
    "sgd",
    {"name": "sgd", "momentum": 0.9, "nesterov": True},
    "adagrad",
    {"name": "rmsprop", "centered": True, "momentum": 0.5},
    {"name": "adam", "amsgrad": True},
    "adamw",
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_state_dict_round_trip_continues_bit_exactly(spec: object) -> None:
    a_params, b_params = _params(), _params()
    a = _optimizer(spec, a_params)
    _steps(a, a_params, 3, seed=1)
    b = _optimizer(spec, b_params)
    with torch.no_grad():
        for pa, pb in zip(a_params, b_params, strict=True):
            pb.copy_(pa)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as from a checkpoint: no shared tensors
    _steps(a, a_params, 4, seed=2)
    _steps(b, b_params, 4, seed=2)
    for pa, pb in zip(a_params, b_params, strict=True):
        assert torch.equal(pa, pb)
    assert float(b.iterations) == 7.0  # type: ignore[attr-defined]


def test_state_is_allocated_when_built_with_keras_initial_values() -> None:
    params = _params()
    opt = _optimizer({"name": "adagrad", "initial_accumulator_value": 0.25}, params)
    for p in params:
        assert torch.equal(opt.state[p]["accumulator"], torch.full_like(p, 0.25))
    assert float(opt.iterations) == 0.0  # type: ignore[attr-defined]


def test_state_of_another_configuration_is_refused_by_name() -> None:
    saved = _optimizer("adam", _params()).state_dict()["state"]
    amsgrad = _optimizer({"name": "adam", "amsgrad": True}, _params())
    # as models/resume.py loads a checkpoint: its state, the configured hyperparameters
    groups = amsgrad.state_dict()["param_groups"]
    with pytest.raises(SpecError, match="velocity_hat"):
        amsgrad.load_state_dict({"state": saved, "param_groups": groups})


def test_weights_without_a_gradient_are_left_alone() -> None:
    params = _params()
    before = [p.detach().clone() for p in params]
    opt = _optimizer({"name": "adam", "weight_decay": 0.1}, params)
    params[0].grad = torch.ones_like(params[0])  # params[1] gets none, as Keras skips it
    opt.step()
    assert not torch.equal(params[0], before[0])
    assert torch.equal(params[1], before[1])
