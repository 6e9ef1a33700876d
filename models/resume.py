"""A run's state into a `Checkpoint` after an epoch, and back into a fresh run to resume it."""

from __future__ import annotations

import torch

from models.data import Standardization
from models.early_stopping import EarlyStopping
from models.errors import SpecError
from models.results import EpochRecord
from models.spec import NetworkSpec, TrainingConfig
from models.weights import Checkpoint, flatten_optimizer, load_state, unflatten_optimizer


def check_resume(
    ckpt: Checkpoint,
    *,
    network: NetworkSpec,
    config: TrainingConfig,
    data_shape: dict[str, int],
) -> None:
    """Refuse a checkpoint made for another network, config (epochs aside) or data shape."""
    if ckpt.network != network.model_dump(mode="json"):
        raise SpecError("the checkpoint was made for a different network spec", loc=("resume",))
    mine = config.model_dump(mode="json")
    theirs = TrainingConfig.model_validate(ckpt.training).model_dump(mode="json")
    mine.pop("epochs"), theirs.pop("epochs")  # training may be extended
    if mine != theirs:
        raise SpecError("the checkpoint was made with a different training config", loc=("resume",))
    if ckpt.data != data_shape:
        raise SpecError(f"the checkpoint was made on data of shape {ckpt.data}", loc=("resume",))


def restore(
    ckpt: Checkpoint,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    early_stopping: EarlyStopping | None,
    device: torch.device,
) -> None:
    """Weights, optimizer and early-stopping state as they were after `ckpt.epoch`."""
    load_state(module, {k: v.to(device) for k, v in ckpt.model_state.items()})
    fresh = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict(
        unflatten_optimizer(ckpt.optimizer_state, ckpt.optimizer_values, fresh)
    )
    if early_stopping is not None and ckpt.early_stopping is not None:
        best = ckpt.best_weights
        best = {k: v.to(device) for k, v in best.items()} if best is not None else None
        early_stopping.load_state(ckpt.early_stopping, best)


def make_checkpoint(
    *,
    network: NetworkSpec,
    training: TrainingConfig,
    epoch: int,
    seed: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[EpochRecord],
    data_shape: dict[str, int],
    standardization: Standardization | None,
    early_stopping: EarlyStopping | None,
    stop_training: bool,
) -> Checkpoint:
    """A run's state after its last completed epoch (`epoch`), copied to the host."""
    opt_tensors, opt_values = flatten_optimizer(optimizer.state_dict())
    es = early_stopping
    return Checkpoint(
        network=network.model_dump(mode="json"),
        training=training.model_dump(mode="json"),
        epoch=epoch,
        seed=seed,
        model_state={k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        optimizer_state={k: v.detach().cpu().clone() for k, v in opt_tensors.items()},
        optimizer_values=opt_values,
        history=[r.as_dict() for r in history],
        data=dict(data_shape),
        standardization=standardization,
        early_stopping=es.state() if es is not None else None,
        best_weights=(
            {k: v.cpu().clone() for k, v in es.best_weights.items()}
            if es is not None and es.best_weights is not None
            else None
        ),
        stop_training=stop_training,
    )
