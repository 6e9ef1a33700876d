"""A trained network as an ONNX model: what `Predictor.predict` computes, in one graph.

The graph takes the raw features, applies the stored standardization, runs the eval-mode network
(dropout off, batch normalization on its moving statistics) and ends with the final activation,
so onnxruntime returns exactly the JSON predict outputs. Input "input" (batch, n_features) float32,
output "output" (batch, units); the batch dimension is dynamic.

A network that starts with a category_encoding layer keeps it in the graph (ScatterElements with
add, then Clip for multi_hot): its input is the token ids themselves, "input" (batch, length)
int64 with both dimensions dynamic and documents shorter than the longest padded with -1 — the
same ids a JSON prediction sends, so no client has to build the 10,000-wide vector.

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
    module: nn.Module,
    *,
    n_features: int,
    standardization: Standardization | None = None,
    token_ids: bool = False,
) -> bytes:
    """ONNX bytes for an eval-mode network (its forward ends with the final activation);
    `token_ids`: the network starts with category_encoding and takes padded int64 ids."""
    wrapped = _Standardized(module, standardization).cpu().eval()
    example = torch.zeros(1, 2, dtype=torch.int64) if token_ids else torch.zeros(1, n_features)
    input_axes = {0: "batch", 1: "length"} if token_ids else {0: "batch"}
    buffer = io.BytesIO()  # never a path: nothing here touches the file system
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        for message in _EXPORTER_DEPRECATION:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            dynamo=False,
            opset_version=OPSET_VERSION,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: input_axes, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def to_onnx(weights: bytes) -> bytes:
    """ONNX bytes for a saved model (`save_model` bytes): standardization and final activation in.

    Loads its own copy of the network, so a module a predictor cache shares is never traced.
    """
    loaded = load_model(weights)
    return module_to_onnx(
        loaded.module,
        n_features=loaded.network.input_dim,
        standardization=loaded.standardization,
        token_ids=loaded.network.encoding is not None,
    )
