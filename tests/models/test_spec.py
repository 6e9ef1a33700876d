"""The spec and config schemas: strict, bounded, Keras names and defaults."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from models import NetworkSpec, TrainingConfig
from models.spec import IRIS_NETWORK, IRIS_TRAINING, Adam, split_rows


def dense(units: int, **kw: object) -> dict[str, object]:
    return {"type": "dense", "units": units, **kw}


def net(*layers: dict[str, object]) -> dict[str, object]:
    return {"layers": list(layers)}


def test_examples_validate() -> None:
    NetworkSpec.model_validate(IRIS_NETWORK)
    TrainingConfig.model_validate(IRIS_TRAINING)
    for model in (NetworkSpec, TrainingConfig):
        schema = model.model_json_schema()
        assert schema["examples"]
        for m in (
            model,
            *[
                getattr(__import__("models.spec", fromlist=["x"]), n)
                for n in ("Dense", "Adam", "EarlyStoppingConfig")
            ],
        ):
            for name, field in m.model_fields.items():
                assert field.description, f"{m.__name__}.{name} has no description"


def test_unknown_layer_type_lists_allowed() -> None:
    with pytest.raises(ValidationError) as e:
        NetworkSpec.model_validate(net(dense(3, input_dim=2), {"type": "conv2d"}))
    msg = str(e.value)
    for allowed in ("dense", "dropout", "activation", "batch_normalization", "layer_normalization"):
        assert allowed in msg


def test_unknown_activation_and_optimizer_list_allowed() -> None:
    with pytest.raises(ValidationError) as e:
        NetworkSpec.model_validate(net(dense(3, input_dim=2, activation="Relu")))
    assert "'relu'" in str(e.value) and "'softmax'" in str(e.value)
    with pytest.raises(ValidationError) as e:
        TrainingConfig.model_validate({"loss": "mse", "optimizer": "nadam"})
    assert "unknown optimizer 'nadam'" in str(e.value) and "adagrad" in str(e.value)


@pytest.mark.parametrize(
    "layer",
    [
        dense("8", input_dim=4),  # no str -> int coercion
        dense(8, input_dim=4.0),
        dense(0, input_dim=4),
        dense(65537, input_dim=4),
        dense(8, input_dim=4, extra=1),
        dense(8, input_dim=4, use_bias="yes"),
        dense(8, input_dim=4, alpha=float("nan")),
        {"type": "dropout", "rate": 1.0, "input_dim": 4},
        {"type": "dropout", "rate": -0.1, "input_dim": 4},
        {"type": "dropout", "rate": float("inf"), "input_dim": 4},
        dense(2, input_shape=[4, 4]),
        dense(2, input_dim=4, bias_initializer="orthogonal"),  # needs a 2-D weight
    ],
)
def test_bad_layers_rejected(layer: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        NetworkSpec.model_validate(net(layer))


def test_layer_count_bound_and_first_layer_input() -> None:
    NetworkSpec.model_validate(net(dense(2, input_dim=2), *[dense(2)] * 99))
    with pytest.raises(ValidationError, match="at most 100"):
        NetworkSpec.model_validate(net(dense(2, input_dim=2), *[dense(2)] * 100))
    with pytest.raises(ValidationError, match="input_dim"):
        NetworkSpec.model_validate(net(dense(2)))
    spec = NetworkSpec.model_validate(net(dense(2, input_shape=[7])))
    assert spec.input_dim == 7
    with pytest.raises(ValidationError, match="previous layer outputs 2"):
        NetworkSpec.model_validate(net(dense(2, input_dim=3), dense(2, input_dim=5)))


def test_explicit_kernel_shape_checked() -> None:
    ok = net(dense(2, input_dim=3, kernel=[[1, 2], [3, 4], [5, 6]], bias=[0, 1]))
    NetworkSpec.model_validate(ok)
    with pytest.raises(ValidationError, match="3 inputs"):
        NetworkSpec.model_validate(net(dense(2, input_dim=3, kernel=[[1, 2], [3, 4]])))
    with pytest.raises(ValidationError, match=r"\[inputs\]\[units\]"):
        NetworkSpec.model_validate(net(dense(2, input_dim=2, kernel=[[1, 2, 3], [3, 4, 5]])))
    with pytest.raises(ValidationError, match="use_bias is false"):
        NetworkSpec.model_validate(net(dense(2, input_dim=2, use_bias=False, bias=[0, 0])))


def test_parameter_limit() -> None:
    with pytest.raises(ValidationError, match="parameters; the limit"):
        NetworkSpec.model_validate(net(dense(65536, input_dim=1_000_000)))


def test_keras_layer_names() -> None:
    spec = NetworkSpec.model_validate(
        net(
            dense(4, input_dim=2),
            {"type": "dropout", "rate": 0.1},
            dense(4, name="dense_1"),
            dense(4),
            {"type": "dropout", "rate": 0.1},
            {"type": "batch_normalization"},
        )
    )
    assert spec.layer_names() == [
        "dense",
        "dropout",
        "dense_1",
        "dense_2",
        "dropout_1",
        "batch_normalization",
    ]
    with pytest.raises(ValidationError, match="unique"):
        NetworkSpec.model_validate(net(dense(4, input_dim=2, name="a"), dense(4, name="a")))


def test_training_defaults_are_keras() -> None:
    cfg = TrainingConfig.model_validate({"loss": "mse"})
    assert (cfg.batch_size, cfg.epochs, cfg.shuffle, cfg.validation_split) == (32, 1, True, 0.0)
    assert cfg.optimizer_config.name == "rmsprop"  # Keras compile() default
    assert cfg.precision == "fp32" and cfg.early_stopping is None and not cfg.standardize


def test_optimizer_forms() -> None:
    a = TrainingConfig.model_validate({"loss": "mse", "optimizer": "Adam"}).optimizer_config
    assert isinstance(a, Adam) and a.epsilon == 1e-7 and a.learning_rate == 0.001
    s = TrainingConfig.model_validate(
        {"loss": "mse", "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "nesterov": True}}
    ).optimizer_config
    assert (s.learning_rate, s.momentum, s.nesterov) == (0.5, 0.9, True)
    with pytest.raises(ValidationError, match="not both"):
        TrainingConfig.model_validate(
            {"loss": "mse", "optimizer": {"name": "sgd", "lr": 1, "learning_rate": 1}}
        )
    with pytest.raises(ValidationError):
        TrainingConfig.model_validate({"loss": "mse", "optimizer": {"name": "sgd", "rho": 0.9}})
    with pytest.raises(ValidationError):
        TrainingConfig.model_validate(
            {"loss": "mse", "optimizer": {"name": "adam", "learning_rate": 0}}
        )
    with pytest.raises(ValidationError):
        TrainingConfig.model_validate(
            {"loss": "mse", "optimizer": {"name": "adam", "learning_rate": 11}}
        )


@pytest.mark.parametrize(
    "patch",
    [
        {"batch_size": 0},
        {"batch_size": 1_000_001},
        {"batch_size": "all"},
        {"batch_size": "32"},
        {"epochs": 100_001},
        {"epochs": 0},
        {"validation_split": 1.0},
        {"clipnorm": 0},
        {"seed": -1},
        {"precision": "fp16"},
        {"loss": "cosine"},
        {"shuffle": 1},
    ],
)
def test_bad_training_rejected(patch: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TrainingConfig.model_validate({"loss": "mse", **patch})


def test_full_batch_and_loss_alias() -> None:
    cfg = TrainingConfig.model_validate({"loss": "mean_squared_error", "batch_size": "full"})
    assert cfg.loss == "mse" and cfg.batch_size == "full"


def test_early_stopping_needs_its_monitor() -> None:
    with pytest.raises(ValidationError, match="no validation data.*validation_split"):
        TrainingConfig.model_validate({"loss": "mse", "early_stopping": {}})
    cfg = TrainingConfig.model_validate(
        {"loss": "mse", "validation_split": 0.2, "early_stopping": {"monitor": "val_accuracy"}}
    )
    assert cfg.early_stopping is not None and cfg.early_stopping.resolved_mode == "max"
    assert cfg.early_stopping.patience == 0 and cfg.early_stopping.min_delta == 0.0


def test_json_round_trip() -> None:
    cfg = TrainingConfig.model_validate(IRIS_TRAINING)
    again = TrainingConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    spec = NetworkSpec.model_validate_json(json.dumps(IRIS_NETWORK))
    assert spec.model_dump(exclude_none=True)["layers"][0]["units"] == 8


def test_split_rows_is_keras_floor() -> None:
    assert split_rows(150, 0.2) == 120
    assert split_rows(10, 0.25) == math.floor(7.5)


def test_read_only_arrays_are_accepted() -> None:
    """Arrays over immutable bytes (np.frombuffer, as datasets decode) train without a warning."""
    from models import data

    x = np.frombuffer(np.arange(8, dtype=np.float32).tobytes(), dtype=np.float32).reshape(4, 2)
    assert not x.flags.writeable
    assert data.features(x).tolist() == x.tolist()


def test_validation_class_warning_names_the_problem() -> None:
    from models.training_spec import validation_class_warning

    classes = ["a", "b", "c"]
    assert validation_class_warning([0, 1, 2, 0, 1, 2, 0, 2, 1, 0], 0.3, classes) is None
    assert validation_class_warning([0, 0, 1, 1, 2, 2, 2, 2, 2, 2], 0.0, classes) is None
    single = validation_class_warning([0, 0, 1, 1, 2, 2, 2, 2, 2, 2], 0.2, classes)
    assert single is not None and "last 2 of 10" in single and "single class ('c')" in single
    unseen = validation_class_warning([0, 1, 2, 0, 1, 2, 0, 1, 1, 2], 0.2, classes)
    assert unseen is not None and "miss 1 of the 3 classes in training ('a')" in unseen
