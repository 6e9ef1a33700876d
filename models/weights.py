"""Weights and checkpoints as safetensors bytes with JSON metadata — never pickle.

Layout: tensors under prefixes (`model/`, `optimizer/<param>/<key>`, `best/`, `standardization/`),
and one metadata entry "fitserve" holding JSON: the format, the network spec (so the network can
be rebuilt from the bytes alone) and whatever else isn't a tensor. A checkpoint holds no random
generator state (models/randomness.py derives each epoch's from the seed), so it resumes on any
device; the `rng/` tensors of checkpoints written before that are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
from pydantic import ValidationError

from models.build import build
from models.data import Standardization
from models.errors import WeightsError
from models.layers import Network
from models.spec import NetworkSpec

MODEL_FORMAT = "fitserve.model/1"
CHECKPOINT_FORMAT = "fitserve.checkpoint/1"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    # clone: safetensors refuses tensors that share storage, and state dicts may hold views
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return safetensors.torch.save(flat, metadata={"fitserve": json.dumps(meta, allow_nan=False)})


def unpack(data: bytes, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise WeightsError("not a safetensors payload (too short)")
    data = bytes(data)
    n = int.from_bytes(data[:8], "little")
    if n > min(_MAX_HEADER, len(data) - 8):
        raise WeightsError("not a safetensors payload (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["fitserve"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError("safetensors payload without fitserve metadata") from e
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise WeightsError(f"expected {expected_format} bytes, got format {found!r}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError for corrupt payloads
        raise WeightsError(f"corrupt safetensors payload: {e}") from e
    return tensors, meta


def _network(meta: dict[str, Any]) -> NetworkSpec:
    try:
        return NetworkSpec.model_validate(meta["network"])
    except (KeyError, ValidationError) as e:
        raise WeightsError(f"the stored network spec is invalid: {e}") from e


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict after checking names, shapes and dtypes, with a message that says which."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"weights don't match the spec: missing {missing}, unexpected {unexpected}"
        )
    for k, v in expected.items():
        if state[k].shape != v.shape or state[k].dtype != v.dtype:
            raise WeightsError(
                f"weight {k} is {state[k].dtype}{list(state[k].shape)}, "
                f"the spec needs {v.dtype}{list(v.shape)}"
            )
    module.load_state_dict(state)


# ---------------------------------------------------------------- finished models


@dataclass
class LoadedModel:
    module: Network  # eval mode, CPU
    network: NetworkSpec
    standardization: Standardization | None
    extra: dict[str, Any]


def save_model(
    result_or_module: Any,
    network: NetworkSpec | dict[str, Any],
    standardization: Standardization | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A trained network as bytes: weights + spec + standardization (+ JSON-able `extra`).

    `result_or_module` is a FitResult (its standardization is used unless one is given) or a module.
    """
    module = getattr(result_or_module, "module", result_or_module)
    if standardization is None:
        standardization = getattr(result_or_module, "standardization", None)
    spec = network if isinstance(network, NetworkSpec) else NetworkSpec.model_validate(network)
    tensors = {f"model/{k}": v for k, v in module.state_dict().items()}
    if standardization is not None:
        tensors.update(standardization.tensors())
    meta = {"format": MODEL_FORMAT, "network": spec.model_dump(mode="json"), "extra": extra or {}}
    return pack(tensors, meta)


def load_model(data: bytes) -> LoadedModel:
    """Rebuild a saved network (eval mode, CPU); names and shapes checked against its spec."""
    tensors, meta = unpack(data, MODEL_FORMAT)
    network = _network(meta)
    module = build(network)
    load_state(module, _prefixed(tensors, "model/"))
    module.eval()
    extra = meta.get("extra") or {}
    return LoadedModel(module, network, Standardization.from_tensors(tensors), extra)


# ---------------------------------------------------------------- checkpoints


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state -> ({"<param>/<key>": tensor}, {"<param>/<key>": json value})."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                values[f"{index}/{key}"] = value
    return tensors, values


def unflatten_optimizer(
    tensors: dict[str, torch.Tensor], values: dict[str, Any], param_groups: list[dict[str, Any]]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *values.items()]:
        index, _, name = key.partition("/")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


@dataclass
class Checkpoint:
    """All it takes to continue training exactly where it stopped, and the spec to rebuild it."""

    network: dict[str, Any]
    training: dict[str, Any]
    epoch: int  # completed epochs
    seed: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]
    optimizer_values: dict[str, Any]
    history: list[dict[str, Any]]
    data: dict[str, int]  # rows, n_features: resuming on other data is refused
    standardization: Standardization | None = None
    early_stopping: dict[str, Any] | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    stop_training: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in self.model_state.items()}
        tensors.update({f"optimizer/{k}": v for k, v in self.optimizer_state.items()})
        if self.best_weights is not None:
            tensors.update({f"best/{k}": v for k, v in self.best_weights.items()})
        if self.standardization is not None:
            tensors.update(self.standardization.tensors())
        meta = {
            "format": CHECKPOINT_FORMAT,
            "network": self.network,
            "training": self.training,
            "epoch": self.epoch,
            "seed": self.seed,
            "optimizer_values": self.optimizer_values,
            "history": self.history,
            "data": self.data,
            "early_stopping": self.early_stopping,
            "has_best_weights": self.best_weights is not None,
            "stop_training": self.stop_training,
            "extra": self.extra,
        }
        return pack(tensors, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        tensors, meta = unpack(data, CHECKPOINT_FORMAT)
        network = _network(meta)
        try:
            return cls(
                network=network.model_dump(mode="json"),
                training=dict(meta["training"]),
                epoch=int(meta["epoch"]),
                seed=int(meta["seed"]),
                model_state=_prefixed(tensors, "model/"),
                optimizer_state=_prefixed(tensors, "optimizer/"),
                optimizer_values=dict(meta["optimizer_values"]),
                history=list(meta["history"]),
                data={k: int(v) for k, v in meta["data"].items()},
                standardization=Standardization.from_tensors(tensors),
                early_stopping=meta["early_stopping"],
                best_weights=_prefixed(tensors, "best/") if meta["has_best_weights"] else None,
                stop_training=bool(meta["stop_training"]),
                extra=dict(meta.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"checkpoint metadata is incomplete: {e}") from e

    def build_module(self) -> Network:
        """The network at this checkpoint, rebuilt from the checkpoint alone (eval mode, CPU)."""
        module = build(NetworkSpec.model_validate(self.network))
        load_state(module, self.model_state)
        return module.eval()
