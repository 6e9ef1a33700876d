"""build(), summary() and check_compatible(): Keras' counts and messages that say the fix."""

from __future__ import annotations

import pytest
import torch

from models import SpecError, build, check_compatible, count_params, summary
from models.spec import IRIS_NETWORK, IRIS_TRAINING

REUTERS = {
    "layers": [
        {"type": "dense", "units": 256, "activation": "relu", "input_dim": 10000},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 46, "activation": "softmax"},
    ]
}


def test_iris_counts_as_keras() -> None:
    s = summary(IRIS_NETWORK)
    assert [layer.params for layer in s.layers] == [40, 72, 27]
    assert [layer.name for layer in s.layers] == ["dense", "dense_1", "dense_2"]
    assert s.layers[0].output_shape == [None, 8]
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (139, 139, 0)
    assert count_params(IRIS_NETWORK) == 139


def test_reuters_counts_as_keras() -> None:
    assert count_params(REUTERS) == 2_599_086
    s = summary(REUTERS)
    assert [layer.params for layer in s.layers] == [2_560_256, 0, 32_896, 0, 5_934]
    net = build(REUTERS)
    assert sum(p.numel() for p in net.parameters()) == 2_599_086


@pytest.mark.parametrize(
    ("layers", "total", "non_trainable"),
    [
        # Keras: Dense(16, input 4) -> BatchNormalization: 80 + 64 (32 non-trainable)
        (
            [{"type": "dense", "units": 16, "input_dim": 4}, {"type": "batch_normalization"}],
            144,
            32,
        ),
        ([{"type": "dense", "units": 16, "input_dim": 4}, {"type": "layer_normalization"}], 112, 0),
        ([{"type": "dense", "units": 3, "input_dim": 5, "use_bias": False}], 15, 0),
        ([{"type": "batch_normalization", "input_dim": 10}, {"type": "dense", "units": 1}], 51, 20),
    ],
)
def test_normalization_and_bias_counts(
    layers: list[dict[str, object]], total: int, non_trainable: int
) -> None:
    s = summary({"layers": layers})
    assert (s.total_params, s.non_trainable_params) == (total, non_trainable)
    net = build({"layers": layers})
    torch_total = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert (torch_total, trainable) == (total, total - non_trainable)


def test_explicit_kernel_keras_layout() -> None:
    spec = {
        "layers": [
            {
                "type": "dense",
                "units": 2,
                "input_dim": 3,
                "kernel": [[1, 2], [3, 4], [5, 6]],
                "bias": [0.5, -0.5],
            }
        ]
    }
    net = build(spec)
    x = torch.tensor([[1.0, 1.0, 1.0]])
    assert net(x).tolist() == [[9.5, 11.5]]  # x @ kernel + bias, as Keras


def test_seeded_build_is_reproducible_and_initializers_apply() -> None:
    a, b = build(IRIS_NETWORK, seed=3), build(IRIS_NETWORK, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    w = a.layers.dense.weight
    assert w.abs().max() <= (6 / (4 + 8)) ** 0.5  # glorot_uniform limit
    assert torch.count_nonzero(a.layers.dense.bias) == 0
    ones = build(
        {
            "layers": [
                {
                    "type": "dense",
                    "units": 3,
                    "input_dim": 2,
                    "kernel_initializer": "ones",
                    "bias_initializer": "ones",
                }
            ]
        }
    )
    assert torch.equal(ones.layers.dense.weight, torch.ones(3, 2))


def test_output_activation_split_for_fused_losses() -> None:
    net = build(IRIS_NETWORK, seed=0)
    x = torch.randn(5, 4)
    assert torch.allclose(net(x), torch.softmax(net.logits(x), dim=-1))
    assert net.output_activation_name == "softmax"


def _check(**kw: object) -> None:
    args: dict[str, object] = {
        "task": "classification",
        "n_features": 4,
        "n_classes": 3,
        "rows": 150,
    }
    args.update(kw)
    network = args.pop("network", IRIS_NETWORK)
    training = args.pop("training", IRIS_TRAINING)
    check_compatible(network, training, **args)  # type: ignore[arg-type]


def test_check_compatible_accepts_iris() -> None:
    _check()


@pytest.mark.parametrize(
    ("kw", "message", "loc_end"),
    [
        (
            {"n_features": 5},
            "first layer expects 4 inputs, the dataset has 5 features",
            "input_dim",
        ),
        ({"n_classes": 4}, "3 units but the dataset has 4 classes", "units"),
        ({"task": "regression", "n_outputs": 1}, "targets are numbers", "loss"),
        (
            {"training": {**IRIS_TRAINING, "validation_split": 0.5}, "rows": 1},
            "both need at least one row",
            "validation_split",
        ),
        ({"training": {**IRIS_TRAINING, "loss": "binary_crossentropy"}}, "for 2 classes", "loss"),
        (
            {
                "training": {
                    **IRIS_TRAINING,
                    "validation_split": 0.2,
                    "early_stopping": {"monitor": "val_mae"},
                }
            },
            'monitor "val_accuracy"',
            "monitor",
        ),
    ],
)
def test_check_compatible_messages(kw: dict[str, object], message: str, loc_end: str) -> None:
    with pytest.raises(SpecError) as e:
        _check(**kw)
    assert message in e.value.message
    assert e.value.loc[-1] == loc_end


def test_categorical_needs_softmax_and_binary_needs_one_sigmoid_unit() -> None:
    linear_out = {"layers": [{"type": "dense", "units": 3, "input_dim": 4}]}
    with pytest.raises(SpecError, match="needs a softmax output"):
        _check(network=linear_out)
    two = {"layers": [{"type": "dense", "units": 2, "input_dim": 4, "activation": "softmax"}]}
    with pytest.raises(SpecError, match="one sigmoid output unit"):
        _check(network=two, n_classes=2, training={**IRIS_TRAINING, "loss": "binary_crossentropy"})
    one = {"layers": [{"type": "dense", "units": 1, "input_dim": 4, "activation": "sigmoid"}]}
    _check(network=one, n_classes=2, training={**IRIS_TRAINING, "loss": "binary_crossentropy"})
    with pytest.raises(SpecError, match="softmax output layer.*binary_crossentropy"):
        _check(network=one, n_classes=2)
