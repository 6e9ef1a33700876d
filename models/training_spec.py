"""The training config: Keras' compile() and fit() arguments (loss, optimizer, early stopping).

Validated as strictly as the network spec (models/network_spec.py); defaults are Keras' (see
docs/keras-defaults.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from models.network_spec import StrictModel

LossName = Literal[
    "mse",
    "mae",
    "huber",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
]
OptimizerName = Literal["sgd", "adagrad", "rmsprop", "adam", "adamw"]
MonitorName = Literal["loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae"]

# Keras accepts these long names for the same losses.
LOSS_ALIASES = {
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
    "huber_loss": "huber",
}


# ---------------------------------------------------------------- optimizers

_LR = "Step size (Keras name; the old alias lr is accepted)."


class _OptimizerBase(StrictModel):
    weight_decay: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Keras' decoupled weight decay: before each update every weight is scaled by "
        "1 - weight_decay * learning_rate (null: none).",
    )

    @model_validator(mode="before")
    @classmethod
    def _lr_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lr" in data:
            if "learning_rate" in data:
                raise ValueError("give learning_rate or its old alias lr, not both")
            data = {("learning_rate" if k == "lr" else k): v for k, v in data.items()}
        return data


class SGD(_OptimizerBase):
    name: Literal["sgd"] = Field(description="Optimizer name.")
    learning_rate: float = Field(0.01, gt=0.0, le=10.0, description=_LR)
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="Momentum factor.")
    nesterov: bool = Field(False, description="Use Nesterov momentum.")


class Adagrad(_OptimizerBase):
    name: Literal["adagrad"] = Field(description="Optimizer name.")
    learning_rate: float = Field(0.001, gt=0.0, le=10.0, description=_LR)
    initial_accumulator_value: float = Field(
        0.1, ge=0.0, le=1e3, description="Starting value of the accumulators."
    )
    epsilon: float = Field(1e-7, gt=0.0, le=1.0, description="Numerical stability term.")


class RMSprop(_OptimizerBase):
    name: Literal["rmsprop"] = Field(description="Optimizer name.")
    learning_rate: float = Field(0.001, gt=0.0, le=10.0, description=_LR)
    rho: float = Field(
        0.9, ge=0.0, lt=1.0, description="Discount factor of the squared-gradient average."
    )
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="Momentum factor.")
    epsilon: float = Field(1e-7, gt=0.0, le=1.0, description="Numerical stability term.")
    centered: bool = Field(False, description="Normalize by the estimated gradient variance.")


class Adam(_OptimizerBase):
    name: Literal["adam"] = Field(description="Optimizer name.")
    learning_rate: float = Field(0.001, gt=0.0, le=10.0, description=_LR)
    beta_1: float = Field(
        0.9, ge=0.0, lt=1.0, description="Decay rate of the first-moment estimate."
    )
    beta_2: float = Field(
        0.999, ge=0.0, lt=1.0, description="Decay rate of the second-moment estimate."
    )
    epsilon: float = Field(
        1e-7, gt=0.0, le=1.0, description="Numerical stability term (Keras 1e-7)."
    )
    amsgrad: bool = Field(False, description="Use the AMSGrad variant.")


class AdamW(Adam):
    name: Literal["adamw"] = Field(description="Optimizer name.")  # type: ignore[assignment]
    weight_decay: float = Field(  # type: ignore[assignment]
        0.004,
        ge=0.0,
        le=1.0,
        description="Decoupled weight decay: w *= 1 - weight_decay * learning_rate before each "
        "update (Keras 0.004).",
    )


AnyOptimizer = Annotated[SGD | Adagrad | RMSprop | Adam | AdamW, Field(discriminator="name")]


# ---------------------------------------------------------------- training


class EarlyStoppingConfig(StrictModel):
    """Keras EarlyStopping; best weights are restored however training ends."""

    monitor: MonitorName = Field(
        "val_loss", description="Quantity to watch (Keras default val_loss)."
    )
    patience: int = Field(
        0, ge=0, le=100_000, description="Epochs without improvement before stopping."
    )
    min_delta: float = Field(
        0.0, ge=0.0, le=1e6, description="Smallest change that counts as an improvement."
    )
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="auto: max for accuracy, min otherwise."
    )
    baseline: float | None = Field(
        None,
        ge=-1e12,
        le=1e12,
        description="Patience runs out unless the monitored quantity beats this value (Keras: an "
        "epoch that improves on the best but not on the baseline doesn't reset the wait).",
    )
    start_from_epoch: int = Field(
        0, ge=0, le=100_000, description="Epochs to train before improvement is watched."
    )
    restore_best_weights: bool = Field(
        False, description="Return the weights of the best epoch instead of the last."
    )

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        if self.mode != "auto":
            return self.mode
        return "max" if "accuracy" in self.monitor else "min"


IRIS_TRAINING: dict[str, Any] = {
    "loss": "categorical_crossentropy",
    "optimizer": "adam",
    "batch_size": 10,
    "epochs": 200,
    "standardize": True,
    "seed": 0,
}


_CLIPS = ("clipnorm", "global_clipnorm", "clipvalue")


def _training_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema states that at most one of the clipping options is a number."""
    schema["examples"] = [IRIS_TRAINING]
    pairs = [(a, b) for i, a in enumerate(_CLIPS) for b in _CLIPS[i + 1 :]]
    both = [
        {"required": list(pair), "properties": {k: {"type": "number"} for k in pair}}
        for pair in pairs
    ]
    schema["not"] = {"anyOf": both}


class TrainingConfig(StrictModel):
    """How to train: Keras' compile() and fit() arguments in one object."""

    model_config = ConfigDict(json_schema_extra=_training_schema)

    loss: LossName = Field(
        description="Loss name; categorical_crossentropy takes class indices or one-hot targets."
    )
    optimizer: OptimizerName | AnyOptimizer = Field(
        "rmsprop",
        description='A name ("adam") or {"name": "adam", "learning_rate": 0.001, ...} with Keras '
        "argument names and defaults. Keras' compile() default is rmsprop.",
    )
    batch_size: int | Literal["full"] = Field(
        32, description='Rows per gradient step (int >= 1), or "full" for batch gradient descent.'
    )
    epochs: int = Field(
        1, ge=1, le=100_000, description="Passes over the training rows (Keras default 1)."
    )
    max_seconds: float | None = Field(
        None,
        gt=0.0,
        le=366 * 24 * 3600.0,
        description="A time budget (seconds) for the job's training, beside epochs, its attempts "
        "together (a job retried after its worker died gets what is left): a job still training "
        "after it is stopped at its next batch and fails with error_code time_limit, its metrics "
        "kept. At most the server's limit (FITSERVE_MAX_JOB_SECONDS); "
        "enforced by the service's workers, not by models.fit. null: the server's limit.",
    )
    shuffle: bool = Field(True, description="Shuffle the training rows every epoch.")
    validation_split: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows held out for validation: the last rows, before shuffling.",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Stop when the monitored quantity stalls."
    )
    clipnorm: float | None = Field(
        None,
        gt=0.0,
        le=1e6,
        description="Clip each weight's gradient to this norm (Keras clipnorm).",
    )
    global_clipnorm: float | None = Field(
        None, gt=0.0, le=1e6, description="Clip the gradient of all weights together to this norm."
    )
    clipvalue: float | None = Field(
        None, gt=0.0, le=1e6, description="Clip every gradient element to [-clipvalue, clipvalue]."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Seed for initialization, shuffling and dropout; random if null.",
    )
    standardize: bool = Field(
        False,
        description="Scale features to mean 0 / std 1 using the training rows; "
        "applied at prediction too.",
    )
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32",
        description="Matmul precision on CUDA (tf32, bf16 autocast); CPU always trains in fp32.",
    )

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_alias(cls, v: Any) -> Any:
        return LOSS_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_name_case(cls, v: Any) -> Any:
        # Keras resolves "Adam" and "adam" alike
        name = v if isinstance(v, str) else v.get("name") if isinstance(v, dict) else None
        if not isinstance(name, str):
            return v
        if name.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(_OPTIMIZERS)}")
        return name.lower() if isinstance(v, str) else {**v, "name": name.lower()}

    @field_validator("optimizer", mode="after")
    @classmethod
    def _optimizer_object(cls, v: Any) -> Any:
        if isinstance(v, str):
            return _OPTIMIZERS[v](name=v)
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_bounds(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1_000_000:
            raise ValueError('batch_size must be between 1 and 1000000, or "full"')
        return v

    @model_validator(mode="after")
    def _one_clipping(self) -> TrainingConfig:
        given = [
            k for k in ("clipnorm", "global_clipnorm", "clipvalue") if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"set only one of clipnorm, global_clipnorm and clipvalue (as Keras); got {given}"
            )
        return self

    @model_validator(mode="after")
    def _monitor_has_data(self) -> TrainingConfig:
        es = self.early_stopping
        if es is not None and es.monitor.startswith("val_") and self.validation_split == 0.0:
            raise ValueError(
                f"early_stopping monitors {es.monitor} but there is no validation data: set "
                f'validation_split (e.g. 0.2) or monitor "{es.monitor[4:]}"'
            )
        return self

    @property
    def optimizer_config(self) -> SGD | Adagrad | RMSprop | Adam | AdamW:
        """The optimizer as an object (a name given in the request is expanded to its defaults)."""
        if isinstance(self.optimizer, str):  # the field default skips validation
            return _OPTIMIZERS[self.optimizer](name=self.optimizer)  # type: ignore[no-any-return]
        return self.optimizer


_OPTIMIZERS: dict[str, Any] = {  # name -> optimizer config class
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}


def split_rows(rows: int, validation_split: float) -> int:
    """Training rows for a Keras validation_split: the first floor(rows * (1 - split))."""
    return int(math.floor(rows * (1.0 - validation_split)))


def validation_class_warning(
    labels: Sequence[int], validation_split: float, classes: Sequence[Any]
) -> str | None:
    """Why a validation_split's rows (the last ones, as Keras takes them) can't judge a
    classifier — a single class, or classes seen in training missing — or None.

    `labels` are class indices in row order, `classes` their names."""
    if validation_split <= 0:
        return None
    n_train = split_rows(len(labels), validation_split)
    train, held_out = set(labels[:n_train]), set(labels[n_train:])
    if not train or not held_out:
        return None
    where = (
        f"the validation rows (the last {len(labels) - n_train} of {len(labels)}: "
        "validation_split takes them from the end, as Keras does)"
    )
    fix = "shuffle the dataset's rows before uploading it, so every class reaches both parts"
    if len(held_out) == 1:
        (only,) = held_out
        return (
            f"{where} hold a single class ({classes[only]!r}): val_ metrics measure that class "
            f"only; {fix}"
        )
    unseen = sorted(train - held_out)
    if unseen:
        names = ", ".join(repr(classes[i]) for i in unseen[:5]) + (
            ", ..." if len(unseen) > 5 else ""
        )
        return (
            f"{where} miss {len(unseen)} of the {len(train)} classes in training ({names}): "
            f"val_ metrics don't measure them; {fix}"
        )
    return None
