"""Spec -> nn.Module, Keras' parameter counts, and the checks that a spec fits a dataset."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from models import layers as L
from models.errors import SpecError
from models.spec import (
    Activation,
    BatchNormalization,
    CategoryEncoding,
    Dense,
    Dropout,
    LayerNormalization,
    NetworkSpec,
    TrainingConfig,
    split_rows,
)

Task = Literal["classification", "regression"]


def as_network(network: NetworkSpec | dict[str, Any]) -> NetworkSpec:
    return network if isinstance(network, NetworkSpec) else NetworkSpec.model_validate(network)


def as_training(training: TrainingConfig | dict[str, Any]) -> TrainingConfig:
    return (
        training
        if isinstance(training, TrainingConfig)
        else TrainingConfig.model_validate(training)
    )


def _init(t: torch.Tensor, name: str, fan_in: int, fan_out: int, g: torch.Generator | None) -> None:
    L.INITIALIZERS[name](t, fan_in, fan_out, g)  # type: ignore[arg-type]


def _penalty(reg: Any) -> tuple[float, float] | None:
    return None if reg is None or (reg.l1 == 0 and reg.l2 == 0) else (reg.l1, reg.l2)


def build(network: NetworkSpec | dict[str, Any], *, seed: int | None = None) -> L.Network:
    """Build the network on the CPU in float32, initialized as Keras would (seeded if `seed` set).

    The last layer's activation is held apart as `output_activation` so losses can use logits.
    """
    spec = as_network(network)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    modules: list[tuple[str, nn.Module]] = []
    width = spec.input_dim
    last = len(spec.layers) - 1
    output_activation: nn.Module | None = None
    for i, (name, layer) in enumerate(zip(spec.layer_names(), spec.layers, strict=True)):
        module: nn.Module
        if isinstance(layer, Dense):
            act = L.make_activation(layer.activation, layer.alpha)
            if i == last:
                output_activation, act = act, None
            dense = L.Dense(
                width,
                layer.units,
                use_bias=layer.use_bias,
                activation=act,
                kernel_penalty=_penalty(layer.kernel_regularizer),
                bias_penalty=_penalty(layer.bias_regularizer),
            )
            with torch.no_grad():
                if layer.kernel is not None:
                    # Keras kernel is (inputs, units); torch weight is its transpose
                    dense.weight.copy_(torch.tensor(layer.kernel, dtype=torch.float32).T)
                else:
                    _init(dense.weight, layer.kernel_initializer, width, layer.units, g)
                if dense.bias is not None:
                    if layer.bias is not None:
                        dense.bias.copy_(torch.tensor(layer.bias, dtype=torch.float32))
                    else:  # Keras' fans of a 1-D weight are its length, both ways
                        _init(dense.bias, layer.bias_initializer, layer.units, layer.units, g)
            module = dense
            width = layer.units
        elif isinstance(layer, Dropout):
            module = nn.Dropout(layer.rate)
        elif isinstance(layer, Activation):
            act = L.make_activation(layer.activation, layer.alpha)
            if i == last:
                output_activation, act = act, None
            module = act if act is not None else nn.Identity()
        elif isinstance(layer, BatchNormalization):
            module = L.BatchNormalization(width, momentum=layer.momentum, epsilon=layer.epsilon)
        elif isinstance(layer, LayerNormalization):
            module = L.LayerNormalization(width, eps=layer.epsilon)
        elif isinstance(layer, CategoryEncoding):
            module = L.CategoryEncoding(layer.num_tokens, layer.output_mode)
        else:  # pragma: no cover - the discriminated union admits nothing else
            raise SpecError(f"unsupported layer type {layer.type!r}", loc=("layers", i))
        modules.append((name, module))
    return L.Network(nn.Sequential(OrderedDict(modules)), output_activation, spec.output_activation)


# ---------------------------------------------------------------- summary


class LayerSummary(BaseModel):
    name: str = Field(description="Keras-style layer name (dense, dense_1, ...).")
    type: str = Field(description="Layer type.")
    output_shape: list[int | None] = Field(
        description="Output shape, None for the batch dimension."
    )
    params: int = Field(description="Parameters in this layer (trainable and not).")
    trainable_params: int = Field(description="Trainable parameters in this layer.")


class Summary(BaseModel):
    layers: list[LayerSummary] = Field(description="One entry per layer, in order.")
    total_params: int = Field(description="All parameters, as Keras' model.summary().")
    trainable_params: int = Field(description="Parameters the optimizer updates.")
    non_trainable_params: int = Field(
        description="E.g. batch normalization's moving mean/variance."
    )


def _layer_params(layer: Any, width: int) -> tuple[int, int]:
    """(total, trainable) for one layer with `width` inputs: Keras' counts."""
    if isinstance(layer, Dense):
        n = width * layer.units + (layer.units if layer.use_bias else 0)
        return n, n
    if isinstance(layer, BatchNormalization):
        return 4 * width, 2 * width  # gamma, beta trainable; moving mean/variance not
    if isinstance(layer, LayerNormalization):
        return 2 * width, 2 * width
    return 0, 0


def summary(network: NetworkSpec | dict[str, Any]) -> Summary:
    """Keras' model.summary() as data, computed from the spec alone."""
    spec = as_network(network)
    rows = []
    width = spec.input_dim
    for name, layer, out in zip(spec.layer_names(), spec.layers, spec.widths(), strict=True):
        total, trainable = _layer_params(layer, width)
        rows.append(
            LayerSummary(
                name=name,
                type=layer.type,
                output_shape=[None, out],
                params=total,
                trainable_params=trainable,
            )
        )
        width = out
    total = sum(r.params for r in rows)
    trainable = sum(r.trainable_params for r in rows)
    return Summary(
        layers=rows,
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
    )


def count_params(network: NetworkSpec | dict[str, Any]) -> int:
    """Total parameters (Keras' count) without allocating the network."""
    return summary(network).total_params


# ---------------------------------------------------------------- compatibility

_CATEGORICAL = ("categorical_crossentropy", "sparse_categorical_crossentropy")
_REGRESSION_LOSSES = ("mse", "mae", "huber")


def check_compatible(
    network: NetworkSpec | dict[str, Any],
    training: TrainingConfig | dict[str, Any],
    *,
    task: Task,
    n_features: int | None,
    n_outputs: int | None = None,
    n_classes: int | None = None,
    rows: int,
) -> None:
    """Raise SpecError when the spec can't train on data of this shape; the message says the fix.

    `n_features` None means token lists (a `sequences` dataset): the network must start with a
    category_encoding layer, and only then."""
    net, cfg = as_network(network), as_training(training)
    out_loc = ("network", "layers", len(net.layers) - 1)
    if n_features is None:
        if net.encoding is None:
            raise SpecError(
                "the dataset holds token lists (sequences) but the first layer is a "
                f"{net.layers[0].type} layer, which reads feature vectors; start the network with "
                '{"type": "category_encoding", "num_tokens": N, "output_mode": "multi_hot"} '
                "(N above the largest token id)",
                loc=("network", "layers", 0),
            )
        if cfg.standardize:
            raise SpecError(
                "standardize applies to feature columns; a token-list dataset is encoded by the "
                "category_encoding layer: set standardize to false",
                loc=("training", "standardize"),
            )
    elif net.encoding is not None:
        raise SpecError(
            "the first layer is category_encoding, which reads token lists, but the dataset has "
            f"{n_features} feature columns; upload the documents as sequences, or replace the "
            f"layer with input_dim: {n_features} on the first dense layer",
            loc=("network", "layers", 0),
        )
    elif net.input_dim != n_features:
        raise SpecError(
            f"the first layer expects {net.input_dim} inputs, "
            f"the dataset has {n_features} features; "
            f"set input_dim to {n_features}",
            loc=("network", "layers", 0, "input_dim"),
        )
    units, act, loss = net.output_units, net.output_activation, cfg.loss
    if task == "classification":
        if n_classes is None or n_classes < 2:
            raise SpecError(
                f"classification needs at least 2 classes, the dataset has {n_classes}",
                loc=("dataset",),
            )
        if loss in _CATEGORICAL:
            if act != "softmax":
                hint = (
                    "; for one sigmoid unit use binary_crossentropy"
                    if units == 1 and act == "sigmoid"
                    else ""
                )
                raise SpecError(
                    f"{loss} needs a softmax output layer, the last layer's activation is {act}; "
                    f'set "activation": "softmax" on the last layer{hint}',
                    loc=(*out_loc, "activation"),
                )
            if units != n_classes:
                raise SpecError(
                    f"the output layer has {units} units but the dataset has {n_classes} classes; "
                    f"set units to {n_classes}",
                    loc=(*out_loc, "units"),
                )
        elif loss == "binary_crossentropy":
            if n_classes != 2:
                raise SpecError(
                    f"binary_crossentropy is for 2 classes, the dataset has {n_classes}; use "
                    f"categorical_crossentropy with a softmax layer of {n_classes} units",
                    loc=("training", "loss"),
                )
            if units != 1 or act != "sigmoid":
                raise SpecError(
                    "binary_crossentropy needs one sigmoid output unit; the last layer has "
                    f'{units} units with {act}: use {{"units": 1, "activation": "sigmoid"}}',
                    loc=out_loc,
                )
        elif units != n_classes and not (units == 1 and n_classes == 2):
            # mse/mae/huber on classes compare the output with one-hot targets
            raise SpecError(
                f"{loss} compares the output with one-hot targets: the output layer needs "
                f"{n_classes} units (one per class), it has {units}",
                loc=(*out_loc, "units"),
            )
        monitor_metric = "accuracy"
    elif task == "regression":
        if n_outputs is None or n_outputs < 1:
            raise SpecError("regression needs at least one target column", loc=("dataset",))
        if loss in _CATEGORICAL:
            raise SpecError(
                f"{loss} is for class labels but the targets are numbers; use mse, mae or huber, "
                "or upload the dataset as a classification dataset",
                loc=("training", "loss"),
            )
        if loss == "binary_crossentropy" and act != "sigmoid":
            raise SpecError(
                "binary_crossentropy on numeric targets needs sigmoid outputs (targets in [0, 1]); "
                f'the last layer uses {act}: set "activation": "sigmoid"',
                loc=(*out_loc, "activation"),
            )
        if units != n_outputs:
            raise SpecError(
                f"the output layer has {units} units but the dataset has {n_outputs} target "
                f"column(s); set units to {n_outputs}",
                loc=(*out_loc, "units"),
            )
        monitor_metric = "mae"
    else:
        raise SpecError(f"unknown task {task!r}; use classification or regression", loc=("task",))

    if rows < 1:
        raise SpecError("the dataset has no rows", loc=("dataset",))
    if cfg.validation_split > 0:
        n_train = split_rows(rows, cfg.validation_split)
        if n_train < 1 or n_train >= rows:
            raise SpecError(
                f"validation_split {cfg.validation_split} of {rows} rows leaves {n_train} for "
                f"training and {rows - n_train} for validation; both need at least one row",
                loc=("training", "validation_split"),
            )
    es = cfg.early_stopping
    if es is not None and es.monitor.removeprefix("val_") not in ("loss", monitor_metric):
        fixed = es.monitor.replace(es.monitor.removeprefix("val_"), monitor_metric)
        raise SpecError(
            f"early_stopping monitors {es.monitor}, which a {task} model doesn't report; "
            f'monitor "{fixed}" or the loss',
            loc=("training", "early_stopping", "monitor"),
        )
