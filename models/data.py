"""Arrays in, tensors out: checks on what `fit` and `Predictor` receive, and standardization."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.errors import SpecError

ArrayLike = np.ndarray | torch.Tensor


def _tensor(a: Any, what: str, loc: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{what} must be a numeric array ({e})", loc=(loc,)) from e
    if arr.dtype.kind not in "biuf":
        kind = "strings" if arr.dtype.kind in "US" else f"dtype {arr.dtype}"
        raise SpecError(f"{what} must be numbers, got {kind}", loc=(loc,))
    if not arr.flags.writeable:
        # e.g. np.frombuffer over bytes; torch refuses to share memory it can't promise to protect
        arr = arr.copy()
    return torch.from_numpy(arr)


def features(x: Any, *, n_features: int | None = None) -> torch.Tensor:
    """float32 (rows, features) on the CPU, sharing memory with `x` where it can."""
    t = _tensor(x, "features", "x")
    if t.dtype == torch.bool or not (t.dtype.is_floating_point or _is_integer(t.dtype)):
        raise SpecError(f"features must be numbers, got {t.dtype}", loc=("x",))
    if t.dim() != 2:
        raise SpecError(
            f"features must be 2-D (rows, features), got shape {tuple(t.shape)}", loc=("x",)
        )
    if n_features is not None and t.shape[1] != n_features:
        raise SpecError(
            f"the network expects {n_features} features per row, got {t.shape[1]}", loc=("x",)
        )
    t = t.detach().to(device="cpu", dtype=torch.float32)
    # a sum is NaN/inf when any value is: one fast pass without a mask the size of the data;
    # only a non-finite sum (a bad value, or overflow of large ones) pays for the exact check
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        row = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0])
        raise SpecError(
            f"features contain NaN or infinity (first in row {row}); clean them first", loc=("x",)
        )
    return t


def targets(y: Any, rows: int) -> torch.Tensor:
    """int64 class indices (rows,), or float32 (rows, outputs) numbers/one-hot rows."""
    t = _tensor(y, "targets", "y").detach().cpu()
    if t.shape[0:1] != (rows,):
        raise SpecError(f"{rows} feature rows but targets of shape {tuple(t.shape)}", loc=("y",))
    if _is_integer(t.dtype) or t.dtype == torch.bool:
        if t.dim() != 1:
            raise SpecError("class-index targets must be 1-D (rows,)", loc=("y",))
        return t.to(torch.int64)
    if not t.dtype.is_floating_point:
        raise SpecError(f"targets must be numbers, got {t.dtype}", loc=("y",))
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.dim() != 2:
        raise SpecError(
            f"targets must be (rows,) or (rows, outputs), got {tuple(t.shape)}", loc=("y",)
        )
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise SpecError("targets contain NaN or infinity; clean them first", loc=("y",))
    return t


def target_classes(yt: torch.Tensor, *, loss: str, output_units: int) -> int | None:
    """The class count when `yt` (from `targets`) is a classification target, None for
    regression; refuses labels or values the output layer and loss can't take."""
    classification = not yt.dtype.is_floating_point or loss == "categorical_crossentropy"
    if classification and yt.dtype.is_floating_point:  # one-hot / probability rows
        n_classes = yt.shape[1]
        if bool((yt < 0).any()):
            raise SpecError("one-hot targets must be >= 0", loc=("y",))
    else:
        n_classes = (2 if output_units == 1 else output_units) if classification else 0
    if classification and not yt.dtype.is_floating_point and yt.shape[0]:
        lo, hi = int(yt.min()), int(yt.max())
        if lo < 0 or hi >= n_classes:
            raise SpecError(
                f"class labels must be 0..{n_classes - 1} for this output layer, got {lo}..{hi}",
                loc=("y",),
            )
    if loss == "binary_crossentropy" and yt.dtype.is_floating_point:
        if bool(((yt < 0) | (yt > 1)).any()):
            raise SpecError("binary_crossentropy targets must lie in [0, 1]", loc=("y",))
    return n_classes if classification else None


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


@dataclass(frozen=True)
class Standardization:
    """Per-feature (x - mean) / std with statistics of the training rows, float32 (features,)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardization:
        # two passes in float64 over row chunks: exact enough for any float32 data, and the
        # memory stays a chunk's, not a float64 copy of the dataset
        rows = max(1, x.shape[0])
        chunk = max(1, (1 << 22) // max(1, x.shape[1]))
        total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], chunk):
            total += x[start : start + chunk].sum(dim=0, dtype=torch.float64)
        mean = total / rows
        sq = torch.zeros_like(total)
        for start in range(0, x.shape[0], chunk):
            sq += (x[start : start + chunk].to(torch.float64) - mean).square().sum(dim=0)
        std = (sq / rows).sqrt()  # population std, as Keras' Normalization and sklearn
        # a constant column has std 0: divide by 1 (sklearn's choice), so it maps to 0 in training
        # and an unseen value at prediction stays finite rather than blowing up by 1/epsilon
        std = torch.where(std > 1e-12 * mean.abs().clamp(min=1.0), std, torch.ones_like(std))
        return cls(mean.to(torch.float32), std.to(torch.float32))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"standardization/mean": self.mean.cpu(), "standardization/std": self.std.cpu()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Standardization | None:
        if "standardization/mean" not in tensors:
            return None
        return cls(tensors["standardization/mean"], tensors["standardization/std"])
