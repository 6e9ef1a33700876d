"""Keras optimizers on torch.optim, with Keras' defaults and argument names.

The update rules are torch's. They match Keras' except where epsilon sits (Keras 3 puts RMSprop's
and Adagrad's epsilon under the square root, and Adam's on the un-bias-corrected sqrt(v)); with
epsilon 1e-7 the difference is below float32 rounding for any gradient that isn't ~0. See
docs/keras-defaults.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.spec import SGD, Adagrad, Adam, AdamW, RMSprop

OptimizerConfig = SGD | Adagrad | RMSprop | Adam | AdamW


def _fast_path(device: torch.device) -> dict[str, bool]:
    # fused kernels exist on CPU and CUDA for Adam/AdamW/Adagrad/SGD: one call per step instead of
    # a Python loop over parameters, which is most of the optimizer's time on small networks
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def make_optimizer(
    config: OptimizerConfig, params: Sequence[torch.nn.Parameter], device: torch.device
) -> torch.optim.Optimizer:
    fast = _fast_path(device)
    params = list(params)
    if isinstance(config, SGD):
        return torch.optim.SGD(
            params,
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=config.nesterov,
            **fast,
        )
    if isinstance(config, Adagrad):
        return torch.optim.Adagrad(
            params,
            lr=config.learning_rate,
            initial_accumulator_value=config.initial_accumulator_value,
            eps=config.epsilon,
            **fast,
        )
    if isinstance(config, RMSprop):
        return torch.optim.RMSprop(
            params,
            lr=config.learning_rate,
            alpha=config.rho,  # torch's alpha is Keras' rho
            eps=config.epsilon,
            momentum=config.momentum,
            centered=config.centered,
            foreach=True,  # no fused RMSprop in torch
        )
    if isinstance(config, AdamW):  # before Adam: AdamW subclasses it
        return torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            betas=(config.beta_1, config.beta_2),
            eps=config.epsilon,
            weight_decay=config.weight_decay,
            amsgrad=config.amsgrad,
            **fast,
        )
    if isinstance(config, Adam):
        return torch.optim.Adam(
            params,
            lr=config.learning_rate,
            betas=(config.beta_1, config.beta_2),
            eps=config.epsilon,
            amsgrad=config.amsgrad,
            **fast,
        )
    raise TypeError(f"unsupported optimizer config {type(config).__name__}")  # pragma: no cover


def clip_gradients(
    grads: list[torch.Tensor],
    norms: torch.Tensor,
    *,
    clipnorm: float | None,
    global_clipnorm: float | None,
    clipvalue: float | None,
) -> None:
    """Keras' gradient clipping, in place. `norms` (params,) are the grads' norms, already computed.

    clipnorm scales each gradient to norm <= clipnorm (Keras clips per variable);
    global_clipnorm scales all of them together; clipvalue clamps elements.
    """
    if clipnorm is not None:
        scale = (clipnorm / norms.clamp(min=clipnorm)).unbind()  # 1 where already within the norm
        torch._foreach_mul_(grads, scale)
    elif global_clipnorm is not None:
        total = norms.square().sum().sqrt()
        torch._foreach_mul_(grads, global_clipnorm / total.clamp(min=global_clipnorm))
    elif clipvalue is not None:
        torch._foreach_clamp_min_(grads, -clipvalue)
        torch._foreach_clamp_max_(grads, clipvalue)
