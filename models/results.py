"""What `fit` returns: one `EpochRecord` per epoch, and the `FitResult` of the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models import data as D
from models.layers import Network
from models.spec import NetworkSpec, TrainingConfig


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    loss: float
    metrics: dict[str, float]  # {"accuracy": ...} or {"mae": ...}
    learning_rate: float
    seconds: float
    grad_norm: float  # mean over the epoch's steps of the global gradient norm
    layer_grad_norms: dict[str, float]  # mean over the steps of each layer's gradient norm
    val_loss: float | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"epoch": self.epoch, "loss": self.loss, **self.metrics}
        if self.val_loss is not None:
            d["val_loss"] = self.val_loss
            d.update(self.val_metrics)
        d.update(
            learning_rate=self.learning_rate,
            seconds=self.seconds,
            grad_norm=self.grad_norm,
            layer_grad_norms=dict(self.layer_grad_norms),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        metric = "accuracy" if "accuracy" in d else "mae"
        return cls(
            epoch=d["epoch"],
            loss=d["loss"],
            metrics={metric: d[metric]},
            learning_rate=d["learning_rate"],
            seconds=d["seconds"],
            grad_norm=d["grad_norm"],
            layer_grad_norms=dict(d["layer_grad_norms"]),
            val_loss=d.get("val_loss"),
            val_metrics={f"val_{metric}": d[f"val_{metric}"]} if f"val_{metric}" in d else {},
        )


@dataclass
class FitResult:
    module: Network  # eval mode, on `device`
    history: list[EpochRecord]
    standardization: D.Standardization | None
    stopped_epoch: int | None  # the epoch training was stopped after, None when all epochs ran
    device: str
    seed: int
    network: NetworkSpec
    training: TrainingConfig
    best_epoch: int | None = None  # with early stopping
    precision: str = "fp32"  # observed from the steps (models/precision.py), not the config
    device_reason: str = ""  # why this device (device="auto" decides in models/placement.py)
    # "cuda_graph", "eager: <why not>" or "eager (fallback): <why given up>" (models/cuda_graph.py)
    step_mode: str = "eager"
