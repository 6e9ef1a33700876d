"""Keras 3's optimizers, update rule for update rule, as multi-tensor torch optimizers.

Each class applies the rule Keras 3 applies on its torch backend
(keras/src/backend/torch/optimizers/torch_*.py), in the same order of float32 operations, so a
run here follows a Keras run to float32 rounding (tests/interop/test_keras_parity.py trains both
side by side; docs/keras-parity.md has the measured deviations). Where the rules differ from
torch.optim's:

- RMSprop and Adagrad divide by sqrt(v + epsilon) (torch: sqrt(v) + epsilon);
- Adam divides by sqrt(v) + epsilon on the *un-corrected* v, with the step size
  lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) (torch: sqrt(v / (1 - beta_2^t)) + epsilon);
- SGD's momentum buffer holds velocity, momentum * m - lr * g (torch: m * b + g, times lr later);
- weight_decay (any optimizer; AdamW's default 0.004) is Keras' decoupled decay, applied before
  the update: w *= 1 - weight_decay * lr, on every trainable weight, biases included.

Fast and capturable: every update is a handful of `torch._foreach_*` calls over all parameters;
the step counter (Keras' `iterations`) is a float32 tensor on the parameters' device, and the
bias corrections are computed from it on the device, so a step has no host reads and can be
recorded in a CUDA graph (models/cuda_graph.py). State is created when the optimizer is built
(Adagrad's accumulators start at initial_accumulator_value, as Keras'), so the first step
allocates nothing. `state_dict()` / `load_state_dict()` round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from models.errors import SpecError
from models.spec import SGD, Adagrad, Adam, AdamW, RMSprop

OptimizerConfig = SGD | Adagrad | RMSprop | Adam | AdamW

# The first parameter's state carries the step counter (Keras has one per optimizer).
ITERATIONS = "iterations"


def _f32(x: float) -> float:
    """`x` rounded to float32, as Keras holds its hyperparameters and learning rate."""
    return float(np.float32(x))


class KerasOptimizer(torch.optim.Optimizer):
    """One param group; per-parameter slots named as Keras names its optimizer variables.

    Built with Keras' argument names as keywords (`lr` is Keras' learning_rate, torch's name for
    it, which torch's schedulers and fitserve's training loop read): `KerasAdam(params, lr=1e-3,
    beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None)`.
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        *,
        lr: float,
        weight_decay: float | None,
        **hyperparameters: Any,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, **hyperparameters}
        super().__init__(list(params), defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group")
        group = self.param_groups[0]
        params = group["params"]
        for p in params:
            self.state[p] = {name: self._initial(name, p) for name in self.slots(group)}
        first = params[0]
        self.state[first][ITERATIONS] = torch.zeros((), dtype=torch.float32, device=first.device)
        self._slots: dict[str, list[torch.Tensor]] = {}
        self._link()
        self.register_load_state_dict_post_hook(_relink)

    # ------------------------------------------------------------ per-class parts

    def slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter state this configuration keeps."""
        return ()

    def _initial(self, slot: str, p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    def update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: dict[str, list[torch.Tensor]],
        step: torch.Tensor,
        group: dict[str, Any],
    ) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    def _link(self) -> None:
        """Lists of each slot over the parameters (rebuilt after load_state_dict replaced them)."""
        params = self.param_groups[0]["params"]
        first = self.state[params[0]]
        it = first[ITERATIONS]
        if it.device != params[0].device or it.dtype != torch.float32:  # a CPU checkpoint on CUDA
            first[ITERATIONS] = it.to(device=params[0].device, dtype=torch.float32)
        names = self.slots(self.param_groups[0])
        missing = [n for n in names if any(n not in self.state[p] for p in params)]
        if missing:
            raise SpecError(
                f"the checkpoint's optimizer state lacks {missing}: it was saved by another "
                f"optimizer than {type(self).__name__} (or an older fitserve); train afresh",
                loc=("resume",),
            )
        self._slots = {n: [self.state[p][n] for p in params] for n in names}

    @property
    def iterations(self) -> torch.Tensor:
        """Steps taken so far (a 0-d float32 tensor on the parameters' device)."""
        return self.state[self.param_groups[0]["params"][0]][ITERATIONS]  # type: ignore[no-any-return]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params: list[torch.Tensor] = group["params"]
        grads = [p.grad for p in params]
        slots = self._slots
        if any(g is None for g in grads):  # Keras skips weights without a gradient
            keep = [i for i, g in enumerate(grads) if g is not None]
            params = [params[i] for i in keep]
            grads = [grads[i] for i in keep]
            slots = {n: [lst[i] for i in keep] for n, lst in slots.items()}
        if not params:
            return loss
        wd = group["weight_decay"]
        if wd:  # Keras: decoupled decay before the update, w *= 1 - wd * lr (in float32)
            factor = np.float32(1.0) - np.float32(wd) * np.float32(group["lr"])
            torch._foreach_mul_(params, float(factor))
        step = self.iterations
        step.add_(1)  # Keras' local_step, iterations + 1
        self.update(params, grads, slots, step, group)  # type: ignore[arg-type]
        return loss


def _relink(optimizer: torch.optim.Optimizer) -> None:
    assert isinstance(optimizer, KerasOptimizer)
    optimizer._link()


class KerasSGD(KerasOptimizer):
    def slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum",) if group["momentum"] != 0 else ()

    def update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: dict[str, list[torch.Tensor]],
        step: torch.Tensor,
        group: dict[str, Any],
    ) -> None:
        lr, momentum = _f32(group["lr"]), group["momentum"]
        if not momentum:
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        m = slots["momentum"]  # velocity: m = momentum * m - lr * g
        torch._foreach_mul_(m, momentum)
        torch._foreach_add_(m, grads, alpha=-lr)
        if group["nesterov"]:  # w += momentum * m - lr * g
            torch._foreach_add_(params, grads, alpha=-lr)
            torch._foreach_add_(params, m, alpha=momentum)
        else:
            torch._foreach_add_(params, m)


class KerasAdagrad(KerasOptimizer):
    def slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("accumulator",)

    def _initial(self, slot: str, p: torch.Tensor) -> torch.Tensor:
        value = self.defaults["initial_accumulator_value"]
        return torch.full_like(p, value, memory_format=torch.preserve_format)

    def update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: dict[str, list[torch.Tensor]],
        step: torch.Tensor,
        group: dict[str, Any],
    ) -> None:
        acc = slots["accumulator"]  # acc += g²;  w -= lr * g / sqrt(acc + eps)
        torch._foreach_add_(acc, torch._foreach_mul(grads, grads))
        denom = torch._foreach_add(acc, group["epsilon"])
        torch._foreach_sqrt_(denom)
        increment = torch._foreach_mul(grads, _f32(group["lr"]))
        torch._foreach_div_(increment, denom)
        torch._foreach_sub_(params, increment)


class KerasRMSprop(KerasOptimizer):
    def slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = ["velocity"]
        if group["momentum"] > 0:
            names.append("momentum")
        if group["centered"]:
            names.append("average_gradient")
        return tuple(names)

    def update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: dict[str, list[torch.Tensor]],
        step: torch.Tensor,
        group: dict[str, Any],
    ) -> None:
        rho = group["rho"]
        v = slots["velocity"]  # v = rho * v + (1 - rho) * g²
        torch._foreach_mul_(v, rho)
        torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=1 - rho)
        denom = torch._foreach_add(v, group["epsilon"])  # sqrt(v + eps), or centered
        if group["centered"]:  # sqrt(v - avg_g² + eps)
            avg = slots["average_gradient"]
            torch._foreach_mul_(avg, rho)
            torch._foreach_add_(avg, grads, alpha=1 - rho)
            torch._foreach_add_(denom, torch._foreach_mul(avg, avg), alpha=-1)
        torch._foreach_sqrt_(denom)
        increment = torch._foreach_mul(grads, _f32(group["lr"]))
        torch._foreach_div_(increment, denom)
        if group["momentum"] > 0:  # m = momentum * m + increment;  w -= m
            m = slots["momentum"]
            torch._foreach_mul_(m, group["momentum"])
            torch._foreach_add_(m, increment)
            torch._foreach_sub_(params, m)
        else:
            torch._foreach_sub_(params, increment)


class KerasAdam(KerasOptimizer):
    """Keras' Adam; with weight_decay set it is Keras' AdamW (Keras' AdamW is Adam plus decay)."""

    def slots(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (
            ("momentum", "velocity", "velocity_hat")
            if group["amsgrad"]
            else ("momentum", "velocity")
        )

    def update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: dict[str, list[torch.Tensor]],
        step: torch.Tensor,
        group: dict[str, Any],
    ) -> None:
        beta_1, beta_2 = group["beta_1"], group["beta_2"]
        # the step size, on the device: lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), in float32
        b1_power = torch.pow(_f32(beta_1), step)
        b2_power = torch.pow(_f32(beta_2), step)
        alpha = torch.sqrt(1 - b2_power).mul_(_f32(group["lr"])).div_(1 - b1_power)
        m, v = slots["momentum"], slots["velocity"]
        torch._foreach_mul_(m, beta_1)  # m = beta_1 * m + (1 - beta_1) * g
        torch._foreach_add_(m, grads, alpha=1 - beta_1)
        torch._foreach_mul_(v, beta_2)  # v = beta_2 * v + (1 - beta_2) * g²
        torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=1 - beta_2)
        if group["amsgrad"]:
            v_hat = slots["velocity_hat"]
            torch._foreach_maximum_(v_hat, v)
            v = v_hat
        denom = torch._foreach_sqrt(v)  # sqrt(v) + eps, v not bias-corrected
        torch._foreach_add_(denom, group["epsilon"])
        increment = torch._foreach_mul(m, alpha)
        torch._foreach_div_(increment, denom)
        torch._foreach_sub_(params, increment)


# Keras' AdamW is its Adam with a weight_decay default; the config carries that default.
_CLASSES: dict[str, type[KerasOptimizer]] = {
    "sgd": KerasSGD,
    "adagrad": KerasAdagrad,
    "rmsprop": KerasRMSprop,
    "adam": KerasAdam,
    "adamw": KerasAdam,
}


def make_optimizer(config: OptimizerConfig, params: Sequence[torch.nn.Parameter]) -> KerasOptimizer:
    """The optimizer `config` names, over `params`: its fields are the Keras arguments."""
    hyperparameters = config.model_dump(exclude={"name", "learning_rate"})
    return _CLASSES[config.name](params, lr=config.learning_rate, **hyperparameters)


def clip_gradients(
    grads: list[torch.Tensor],
    norms: torch.Tensor,
    *,
    clipnorm: float | None,
    global_clipnorm: float | None,
    clipvalue: float | None,
) -> None:
    """Keras' gradient clipping, in place. `norms` (params,) are the grads' norms, already computed.

    clipnorm scales each gradient to norm <= clipnorm (Keras clips per variable: g * c / max(|g|,
    c)); global_clipnorm scales all of them together by c * min(1 / norm, 1 / c) (inf or NaN where
    the norm is, as Keras); clipvalue clamps elements.
    """
    if clipnorm is not None:
        torch._foreach_mul_(grads, clipnorm)
        torch._foreach_div_(grads, norms.clamp(min=clipnorm).unbind())
    elif global_clipnorm is not None:
        total = norms.square().sum().sqrt()
        scale = torch.clamp(total.reciprocal(), max=1.0 / global_clipnorm).mul_(global_clipnorm)
        torch._foreach_mul_(grads, scale.add_(total - total))
    elif clipvalue is not None:
        torch._foreach_clamp_min_(grads, -clipvalue)
        torch._foreach_clamp_max_(grads, clipvalue)
