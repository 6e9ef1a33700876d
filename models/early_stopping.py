"""Keras' EarlyStopping, which the Trainer consults after every epoch (models/train.py)."""

from __future__ import annotations

import math
from typing import Any

import torch

from models.spec import EarlyStoppingConfig


class EarlyStopping:
    """Keras 3's EarlyStopping rules, with its state exposed for checkpoints.

    Improvement: current + min_delta < best (min mode) or current - min_delta > best (max mode).
    `wait` counts epochs since the last improvement; training stops when wait >= patience (never
    after the first epoch, as Keras). An improvement that doesn't also beat `baseline` leaves the
    wait running; the first `start_from_epoch` epochs are not watched. With restore_best_weights
    the best epoch's weights are put back when training ends, however it ends (Keras 3 behaviour).
    """

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config
        self.mode = config.resolved_mode
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _is_improvement(self, current: float, reference: float | None) -> bool:
        if reference is None:
            return True
        d = self.config.min_delta
        return current + d < reference if self.mode == "min" else current - d > reference

    def update(self, epoch: int, logs: dict[str, Any], module: torch.nn.Module) -> bool:
        """Record an epoch (1-based); True when training should stop."""
        current = logs.get(self.config.monitor)
        if current is None or not math.isfinite(current) or epoch <= self.config.start_from_epoch:
            return False
        keep = self.config.restore_best_weights
        if keep and self.best_weights is None:
            self.best_weights, self.best_epoch = _copy_state(module), epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if keep:
                self.best_weights = _copy_state(module)
            if self._is_improvement(current, self.config.baseline):
                self.wait = 0
            return False
        if self.wait >= self.config.patience and epoch > 1:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, module: torch.nn.Module) -> None:
        if self.config.restore_best_weights and self.best_weights is not None:
            module.load_state_dict(self.best_weights)

    def state(self) -> dict[str, Any]:
        """JSON-able state; best_weights travel separately as tensors."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state(
        self, state: dict[str, Any], best_weights: dict[str, torch.Tensor] | None
    ) -> None:
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
        self.best_weights = best_weights


def _copy_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
