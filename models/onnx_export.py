"""A trained network as an ONNX model: what `Predictor.predict` computes, in one graph.

The graph takes the raw features, applies the stored standardization, runs the eval-mode network
(dropout off, batch normalization on its moving statistics) and ends with the final activation,
so onnxruntime returns exactly the JSON predict outputs. Input "input" (batch, n_features) float32,
output "output" (batch, units); the batch dimension is dynamic.

torch 2.13 still ships the TorchScript exporter (`dynamo=False`): it needs no extra package and
exports an MLP in well under a second, where the torch.export-based one needs onnxscript and takes
tens of seconds on a small CPU. It warns that it is deprecated; when a torch upgrade removes it,
switch to `dynamo=True` and add onnxscript to the dependencies.
"""

from __future__ import annotations

import io
import threading
import warnings

import torch
from torch import nn

from models.data import Standardization
from models.weights import load_model

# ONNX 17 is the first opset with LayerNormalization as one op; onnxruntime has run it since 1.14.
OPSET_VERSION = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"

# The exporter swaps global warning filters and traces through global TorchScript state: one at a
# time per process.
_EXPORT_LOCK = threading.Lock()
_EXPORTER_DEPRECATION = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
)


class _Standardized(nn.Module):
    """(x - mean) / std in front of the network, as Predictor applies it."""

    def __init__(self, module: nn.Module, standardization: Standardization | None) -> None:
        super().__init__()
        self.module = module
        self.standardize = standardization is not None
        if standardization is not None:
            self.register_buffer("mean", standardization.mean.detach().clone().float())
            self.register_buffer("std", standardization.std.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        return self.module(x)


def module_to_onnx(
    module: nn.Module, *, n_features: int, standardization: Standardization | None = None
) -> bytes:
    """ONNX bytes for an eval-mode network (its forward ends with the final activation)."""
    wrapped = _Standardized(module, standardization).cpu().eval()
    buffer = io.BytesIO()  # never a path: nothing here touches the file system
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        for message in _EXPORTER_DEPRECATION:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(
            wrapped,
            (torch.zeros(1, n_features),),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            dynamo=False,
            opset_version=OPSET_VERSION,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def to_onnx(weights: bytes) -> bytes:
    """ONNX bytes for a saved model (`save_model` bytes): standardization and final activation in.

    Loads its own copy of the network, so a module a predictor cache shares is never traced.
    """
    loaded = load_model(weights)
    return module_to_onnx(
        loaded.module, n_features=loaded.network.input_dim, standardization=loaded.standardization
    )
