"""Token-list inputs: ragged documents of token ids, kept as values + offsets, never densified.

A dataset of documents (Reuters newswires as word indices, say) is `TokenLists(values, offsets)`:
`values` int64 (tokens,) holds every document's ids end to end and `offsets` int64 (rows + 1,)
says where each starts, so row i is `values[offsets[i]:offsets[i + 1]]`. A batch of rows becomes
a (batch, length) int64 matrix padded with PAD (`padded`), which the network's category_encoding
layer (models/layers.py) turns into its dense (batch, num_tokens) input on the training device:
the memory of one dense batch, never of the dense dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from models.errors import SpecError
from models.layers import TokenBatch
from models.spec import CategoryEncoding, NetworkSpec

PAD = -1  # a padding slot in a batch matrix; the encoding layer adds nothing for it


@dataclass(frozen=True)
class TokenLists:
    """Documents of token ids: values int64 (tokens,), offsets int64 (rows + 1,), on one device."""

    values: torch.Tensor
    offsets: torch.Tensor

    @property
    def rows(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def n_tokens(self) -> int:
        return self.values.shape[0]

    @property
    def device(self) -> torch.device:
        return self.values.device

    def lengths(self) -> torch.Tensor:
        """int64 (rows,): tokens per document."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str) -> TokenLists:
        return TokenLists(self.values.to(device), self.offsets.to(device))

    def take(self, start: int, stop: int) -> TokenLists:
        """Rows start..stop-1 as their own TokenLists (views of the values)."""
        offsets = self.offsets[start : stop + 1]
        first, last = int(offsets[0]), int(offsets[-1])
        return TokenLists(self.values[first:last], offsets - first)

    def padded(self, idx: torch.Tensor | None = None, *, width: int | None = None) -> torch.Tensor:
        """Rows `idx` (all rows when None) as int64 (len(idx), width), padded with PAD.

        `width` defaults to the longest of those rows; a fixed width (the longest document of the
        dataset) gives every batch the same shape, as a CUDA graph needs. Runs on the tensors'
        device: the gather is the only per-batch work the token lists add."""
        if idx is None:
            idx = torch.arange(self.rows, device=self.device)
        starts = self.offsets[idx]  # (batch,)
        lengths = self.offsets[idx + 1] - starts
        if width is None:
            width = int(lengths.max()) if idx.shape[0] else 0
        width = max(width, 1)
        if self.n_tokens == 0:
            return torch.full((idx.shape[0], width), PAD, dtype=torch.int64, device=self.device)
        cols = torch.arange(width, device=self.device)
        valid = cols < lengths[:, None]  # (batch, width)
        where = torch.where(valid, starts[:, None] + cols, 0)
        return torch.where(valid, self.values[where], PAD)

    def flat(self, idx: torch.Tensor) -> TokenBatch:
        """Rows `idx` as (row in batch, id) pairs: as many entries as the documents hold ids."""
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts  # (batch,)
        total = int(lengths.sum())
        batch = torch.arange(idx.shape[0], device=self.device)
        rows = torch.repeat_interleave(batch, lengths, output_size=total)  # (ids,)
        first = torch.cumsum(lengths, 0) - lengths  # where each row's ids start in the batch
        at = torch.arange(total, device=self.device) - first[rows] + starts[rows]
        return TokenBatch(rows=rows, ids=self.values[at], size=idx.shape[0])

    # ------------------------------------------------------------ building and checking

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[Any]], *, loc: str = "x") -> TokenLists:
        """From Python lists of ints (a JSON body): refuses non-integers and negative ids,
        naming the first bad row."""
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
            raise SpecError("token lists must be a list of lists of integer token ids", loc=(loc,))
        lengths = np.empty(len(sequences), dtype=np.int64)
        for i, seq in enumerate(sequences):
            if isinstance(seq, (str, bytes, dict)) or not isinstance(seq, Sequence):
                raise SpecError(
                    f"row {i} is not a list of token ids (got {type(seq).__name__}); each row is "
                    "a list like [12, 7, 431]",
                    loc=(loc, i),
                )
            lengths[i] = len(seq)
        flat = list(chain.from_iterable(sequences))
        if not all(type(v) is int for v in flat):  # bool is an int subclass, not int itself
            for i, seq in enumerate(sequences):
                for j, v in enumerate(seq):
                    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                        raise SpecError(
                            f"row {i} has {v!r} at position {j}: token ids are integers >= 0",
                            loc=(loc, i, j),
                        )
        try:
            values = np.array(flat, dtype=np.int64)
        except OverflowError:
            raise SpecError("token ids must be below 2**63", loc=(loc,)) from None
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls.from_arrays(values, offsets, loc=loc)

    @classmethod
    def from_numbers(
        cls, rows: Sequence[Sequence[float]] | np.ndarray, *, loc: str = "x"
    ) -> TokenLists:
        """From rows of numbers as a JSON parser hands them over (ints, or floats where a body was
        read as numbers): whole numbers are ids, anything else is refused naming the row."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = (
            np.asarray(rows, dtype=np.float64).reshape(-1)
            if isinstance(rows, np.ndarray)
            else np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=int(offsets[-1]))
        )
        whole = np.isfinite(flat) & (flat == np.floor(flat)) & (np.abs(flat) < 2**53)
        if not whole.all():
            at = int(np.flatnonzero(~whole)[0])
            row = int(np.searchsorted(offsets, at, side="right")) - 1
            raise SpecError(
                f"row {row} has {float(flat[at])!r} at position {at - int(offsets[row])}: "
                "token ids are integers >= 0",
                loc=(loc, row),
            )
        return cls.from_arrays(flat.astype(np.int64), offsets, loc=loc)

    @classmethod
    def from_arrays(cls, values: Any, offsets: Any, *, loc: str = "x") -> TokenLists:
        """From values + offsets arrays (stored datasets, Parquet list columns): checks that the
        offsets start at 0, never decrease and end at len(values), and that no id is negative."""
        v = torch.as_tensor(np.asarray(values)).to(torch.int64).reshape(-1)
        o = torch.as_tensor(np.asarray(offsets)).to(torch.int64).reshape(-1)
        if o.shape[0] < 1 or int(o[0]) != 0 or int(o[-1]) != v.shape[0]:
            raise SpecError(
                "token offsets must start at 0 and end at the number of token ids", loc=(loc,)
            )
        if o.shape[0] > 1 and bool((o[1:] < o[:-1]).any()):
            raise SpecError("token offsets must not decrease", loc=(loc,))
        tokens = cls(v, o)
        if v.shape[0] and int(v.min()) < 0:
            at = int((v < 0).nonzero()[0, 0])
            row = tokens.row_of(at)
            raise SpecError(
                f"row {row} has token id {int(v[at])}: token ids are integers >= 0",
                loc=(loc, row),
            )
        return tokens

    def row_of(self, position: int) -> int:
        """The row that holds values[position]."""
        return int(torch.searchsorted(self.offsets, position, right=True)) - 1

    def check_for(self, encoding: CategoryEncoding, *, loc: str = "x") -> None:
        """Raise SpecError (naming the row and the id) unless every id is below num_tokens, and,
        for one_hot, every row holds exactly one id."""
        n = encoding.num_tokens
        if self.n_tokens and int(self.values.max()) >= n:
            at = int((self.values >= n).nonzero()[0, 0])
            row = self.row_of(at)
            raise SpecError(
                f"row {row} has token id {int(self.values[at])} but the category_encoding layer "
                f"takes ids 0..{n - 1} (num_tokens {n}); raise num_tokens or map rarer words to "
                "an out-of-vocabulary id below it",
                loc=(loc, row),
            )
        if encoding.output_mode == "one_hot" and self.rows:
            lengths = self.lengths()
            bad = (lengths != 1).nonzero()
            if bad.shape[0]:
                row = int(bad[0, 0])
                raise SpecError(
                    f"row {row} has {int(lengths[row])} token ids; one_hot encodes exactly one id "
                    'per row: use "multi_hot" or "count" for documents',
                    loc=(loc, row),
                )


def as_tokens(x: Any, network: NetworkSpec, *, loc: str = "x") -> TokenLists:
    """`x` (TokenLists or lists of ids) checked against the network's category_encoding layer."""
    encoding = network.encoding
    if encoding is None:
        raise SpecError(
            "token lists need a network whose first layer is "
            '{"type": "category_encoding", "num_tokens": N}; this network reads feature vectors',
            loc=(loc,),
        )
    tokens = x if isinstance(x, TokenLists) else TokenLists.from_lists(x, loc=loc)
    tokens = tokens.to("cpu") if tokens.device.type != "cpu" else tokens
    tokens.check_for(encoding, loc=loc)
    return tokens


def batch_rows(
    x: torch.Tensor | TokenLists, rows: torch.Tensor | slice
) -> torch.Tensor | TokenBatch:
    """The network's input for `rows` of `x` (indices or a slice): feature rows as they are;
    documents as (row, id) pairs on the CPU, or on CUDA as a padded (batch, length) id matrix,
    whose shape needs no host sync (the flat form reads its length back)."""
    if isinstance(x, torch.Tensor):
        return x[rows]
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(x.rows)
        rows = torch.arange(start, stop, device=x.device)
    return x.flat(rows) if x.device.type == "cpu" else x.padded(rows)


def token_width(x: TokenLists) -> int:
    """The longest document's length (at least 1): the static width of every padded batch."""
    return max(1, int(x.lengths().max())) if x.rows else 1


# ---------------------------------------------------------------- stored form


def to_bytes(tokens: TokenLists) -> bytes:
    """safetensors {"values": int64 (tokens,), "offsets": int64 (rows + 1,)}: how a dataset's
    documents are stored (beside {"x": float32 (rows, features)} for a feature matrix)."""
    return st_save(
        {
            "values": np.ascontiguousarray(tokens.values.cpu().numpy(), dtype=np.int64),
            "offsets": np.ascontiguousarray(tokens.offsets.cpu().numpy(), dtype=np.int64),
        }
    )


def inputs_from_bytes(data: bytes) -> np.ndarray | TokenLists:
    """A stored dataset's inputs: the float32 feature matrix, or its documents as TokenLists."""
    arrays = st_load(bytes(data))
    if "x" in arrays:
        return arrays["x"]
    return TokenLists.from_arrays(arrays["values"], arrays["offsets"])
