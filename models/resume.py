"""A run's state into a `Checkpoint` after an epoch, and back into a fresh `Trainer` to resume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.errors import SpecError
from models.results import EpochRecord
from models.spec import TrainingConfig
from models.weights import Checkpoint, flatten_optimizer, load_state, unflatten_optimizer

if TYPE_CHECKING:
    from models.train import Trainer


def check_resume(trainer: Trainer, ckpt: Checkpoint) -> None:
    """Refuse a checkpoint made for another network, config (epochs aside) or data shape."""
    if ckpt.network != trainer.network.model_dump(mode="json"):
        raise SpecError("the checkpoint was made for a different network spec", loc=("resume",))
    mine = trainer.config.model_dump(mode="json")
    theirs = TrainingConfig.model_validate(ckpt.training).model_dump(mode="json")
    mine.pop("epochs"), theirs.pop("epochs")  # training may be extended
    if mine != theirs:
        raise SpecError("the checkpoint was made with a different training config", loc=("resume",))
    if ckpt.data != trainer.data_shape:
        raise SpecError(f"the checkpoint was made on data of shape {ckpt.data}", loc=("resume",))


def restore(trainer: Trainer, ckpt: Checkpoint) -> None:
    """Weights, optimizer, early-stopping state and history as they were after `ckpt.epoch`."""
    dev = trainer.device
    load_state(trainer.module, {k: v.to(dev) for k, v in ckpt.model_state.items()})
    fresh = trainer.optimizer.state_dict()["param_groups"]
    trainer.optimizer.load_state_dict(
        unflatten_optimizer(ckpt.optimizer_state, ckpt.optimizer_values, fresh)
    )
    if trainer.early_stopping is not None and ckpt.early_stopping is not None:
        best = ckpt.best_weights
        best = {k: v.to(dev) for k, v in best.items()} if best is not None else None
        trainer.early_stopping.load_state(ckpt.early_stopping, best)
    trainer.history = [EpochRecord.from_dict(d) for d in ckpt.history]
    trainer.epoch = ckpt.epoch
    trainer.stop_training = ckpt.stop_training


def make_checkpoint(trainer: Trainer) -> Checkpoint:
    """The state after the trainer's last completed epoch."""
    opt_tensors, opt_values = flatten_optimizer(trainer.optimizer.state_dict())
    es = trainer.early_stopping
    return Checkpoint(
        network=trainer.network.model_dump(mode="json"),
        training=trainer.config.model_dump(mode="json"),
        epoch=trainer.epoch,
        seed=trainer.seed,
        model_state={k: v.detach().cpu().clone() for k, v in trainer.module.state_dict().items()},
        optimizer_state={k: v.detach().cpu().clone() for k, v in opt_tensors.items()},
        optimizer_values=opt_values,
        history=[r.as_dict() for r in trainer.history],
        data=dict(trainer.data_shape),
        standardization=trainer.standardization,
        early_stopping=es.state() if es is not None else None,
        best_weights=(
            {k: v.cpu().clone() for k, v in es.best_weights.items()}
            if es is not None and es.best_weights is not None
            else None
        ),
        stop_training=trainer.stop_training,
    )
