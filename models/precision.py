"""What a training step computes in: the autocast context for a device and the precision asked
for, and the precision read back from what the step's layers actually produced.

On CUDA, "tf32" allows TF32 matmuls (set by the trainer for the run) and "bf16" adds bfloat16
autocast; the CPU trains in fp32 whatever is asked. The precision a result or a job records is
`observed`, never the config's value copied: if the step ran in float32, it says fp32.

Tests only: FITSERVE_TEST_CPU_BF16=1 makes the CPU honour "bf16" with CPU autocast, so the code
that runs under CUDA bf16 autocast (the layers' float32 statistics, the observation below) runs
on machines without a GPU. Unset in production.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from models.errors import SpecError
from models.layers import Dense

TEST_CPU_BF16_ENV = "FITSERVE_TEST_CPU_BF16"
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype a step on `device` runs under for `precision`; None: no autocast."""
    if precision != "bf16":
        return None
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get(TEST_CPU_BF16_ENV) == "1"):
        return torch.bfloat16
    return None


def autocast(
    device: torch.device, precision: str, *, cache_enabled: bool = True
) -> AbstractContextManager[object]:
    """The forward pass's autocast context (a no-op one when the step computes in float32).
    `cache_enabled=False` under CUDA graph capture (torch: make_graphed_callables)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def _has_tensor_cores_for(device: torch.device) -> bool:
    """bfloat16 matmuls and TF32 both need compute capability 8.0 (Ampere) or later."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def check_supported(device: torch.device, precision: str) -> None:
    """Refuse bf16 on a GPU without bfloat16 matmuls, before training: it fails on every attempt
    (torch's autocast raises, or cuBLAS reports CUBLAS_STATUS_NOT_SUPPORTED)."""
    if precision == "bf16" and device.type == "cuda" and not _has_tensor_cores_for(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise SpecError(
            f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) cannot "
            "train in bf16, which needs 8.0 or later; use precision fp32 or tf32",
            loc=("training", "precision"),
        )


def observed(module: nn.Module, device: torch.device) -> str | None:
    """The precision the last forward pass of `module`'s Dense layers computed in: their output
    dtype; on CUDA, float32 with TF32 matmuls allowed (read now: call it while training) on a GPU
    that has them is "tf32". None before any forward pass."""
    for layer in module.modules():
        if isinstance(layer, Dense) and layer.computed_dtype is not None:
            dtype = layer.computed_dtype
            if dtype == torch.float32 and device.type == "cuda":
                tf32 = torch.backends.cuda.matmul.allow_tf32 and _has_tensor_cores_for(device)
                return "tf32" if tf32 else "fp32"
            return _NAMES.get(dtype, str(dtype).removeprefix("torch."))
    return None
