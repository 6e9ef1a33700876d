"""Predictions from saved weights: eval mode, standardization applied, chunked, no autograd."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models import data as D
from models.layers import NetworkInput
from models.spec import NetworkSpec
from models.tokens import TokenLists, as_tokens, batch_rows
from models.weights import load_model

_CHUNK_ELEMENTS = 1 << 22  # rows * features per forward pass: bounds memory for huge requests
# Below this many multiply-adds a request runs on one thread: splitting a tiny matmul between
# OpenMP threads costs more than it saves, and on a busy machine every barrier waits for a
# descheduled thread — measured: iris, 100 rows, 2 shared cores, 32 ms with 2 threads vs 0.7 ms
# with 1 (bench/predict.py). torch's thread count is per calling thread, so this is thread-safe.
_SINGLE_THREAD_FLOPS = 1 << 23


class Predictor:
    """Loads `save_model` bytes once; `predict` returns the final activation's outputs.

    Holds no per-request state, so one instance can serve concurrent requests.
    """

    n_features: int  # features per input row; for a token model, num_tokens (the encoded width)
    takes_tokens: bool  # the first layer is category_encoding: inputs are lists of token ids

    def __init__(self, weights: bytes, *, device: str = "cpu") -> None:
        loaded = load_model(weights)
        self.network: NetworkSpec = loaded.network
        self.standardization = loaded.standardization
        self.extra: dict[str, Any] = loaded.extra
        self.device = torch.device(device)
        self.module = loaded.module.to(self.device).eval()
        self._params = sum(p.numel() for p in self.module.parameters())
        # read several times by every prediction: worked out once (the network never changes)
        self.n_features = self.network.input_dim
        self.takes_tokens = self.network.encoding is not None

    @property
    def n_parameters(self) -> int:
        return self._params

    @property
    def n_outputs(self) -> int:
        return self.network.output_units

    def predict(self, x: Any, *, chunk_rows: int | None = None) -> np.ndarray:
        """(rows, n_features) -> float32 (rows, outputs); probabilities for softmax/sigmoid.

        A token model (`takes_tokens`) takes lists of token ids (or `TokenLists`) instead, checked
        against its category_encoding layer. Rows go through the network `chunk_rows` at a time
        (default: ~4M encoded input values a chunk)."""
        threads = torch.get_num_threads()
        small = (
            self.device.type == "cpu" and 2 * self._params * _row_count(x) < _SINGLE_THREAD_FLOPS
        )
        if small and threads != 1:
            # before the inputs are converted too: features()' finiteness sum over 10,000 rows
            # of 4 took ~5 ms of CPU on 2 threads (the idle one spinning), 0.1 ms on one
            torch.set_num_threads(1)
        try:
            return self._predict(x, chunk_rows)
        finally:
            if small and threads != 1:
                torch.set_num_threads(threads)

    def _predict(self, x: Any, chunk_rows: int | None) -> np.ndarray:
        xt: torch.Tensor | TokenLists = (
            as_tokens(x, self.network)
            if self.takes_tokens
            else D.features(x, n_features=self.n_features)
        )
        chunk = chunk_rows or max(1, _CHUNK_ELEMENTS // self.n_features)
        rows = xt.rows if isinstance(xt, TokenLists) else xt.shape[0]
        if rows == 0:
            return np.zeros((0, self.n_outputs), dtype=np.float32)
        with torch.inference_mode():
            outs = [
                self._forward(batch_rows(xt, slice(i, i + chunk))) for i in range(0, rows, chunk)
            ]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).numpy()

    def _rows(self, x: torch.Tensor | TokenLists, start: int, stop: int) -> NetworkInput:
        if isinstance(x, TokenLists) and self.device.type != "cpu":
            return x.take(start, stop).padded()  # moved to the device whole by _forward
        return batch_rows(x, slice(start, stop))

    def _forward(self, x: NetworkInput) -> torch.Tensor:
        """One chunk of CPU float32 rows (or token ids) -> CPU float32 outputs."""
        if self.device.type != "cpu" and isinstance(x, torch.Tensor):
            x = x.to(self.device)
        if self.standardization is not None and isinstance(x, torch.Tensor):
            x = self.standardization.apply(x)
        y = self.module(x)
        return y if self.device.type == "cpu" and y.dtype == torch.float32 else y.float().cpu()


def _row_count(x: Any) -> int:
    """The rows of `predict`'s input before it is converted (a 0-d input counts as one; the
    conversion refuses it)."""
    if isinstance(x, TokenLists):
        return x.rows
    shape = getattr(x, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    return len(x)
