"""The network spec and training config: what a Keras user writes, validated strictly.

Names and defaults follow Keras (see docs/keras-defaults.md for each default against PyTorch's and
the reason wherever fitserve differs). Every number is bounded and finite, unknown keys are
rejected, and strings are never coerced to numbers, so a spec that validates is one we can build.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LAYERS = 100
MAX_UNITS = 65_536
MAX_INPUT_DIM = 1_000_000
# 100M float32 parameters is 400 MB of weights (x4 with Adam state): far beyond any MLP a request
# should carry, small enough that one job can't exhaust a worker.
MAX_PARAMS = 100_000_000

ActivationName = Literal[
    "linear",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "mish",
    "relu6",
    "hard_sigmoid",
    "softmax",
]
InitializerName = Literal[
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "orthogonal",
    "zeros",
    "ones",
    "random_normal",
    "random_uniform",
    "truncated_normal",
]
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

_LAYER_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"


def format_count(n: int) -> str:
    """4.0e10 rather than Python's 4.0e+10: how the limits read in messages."""
    mantissa, _, exponent = f"{n:.1e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


class _Strict(BaseModel):
    # strict: "0.1" is not a number here; allow_inf_nan: NaN/inf never reach the optimizer
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


# ---------------------------------------------------------------- layers


class Regularizer(_Strict):
    """Keras `L1L2`: adds `l1 * sum(|w|) + l2 * sum(w**2)` to the loss."""

    l1: float = Field(
        0.0, ge=0.0, le=100.0, description="L1 factor: adds l1 * sum(|w|) to the loss."
    )
    l2: float = Field(
        0.0, ge=0.0, le=100.0, description="L2 factor: adds l2 * sum(w**2) to the loss."
    )


class _LayerBase(_Strict):
    name: str | None = Field(
        None,
        pattern=_LAYER_NAME,
        description="Layer name; default as Keras: dense, dense_1, dropout, ... (unique).",
    )
    input_dim: int | None = Field(
        None,
        ge=1,
        le=MAX_INPUT_DIM,
        description="Number of input features; required on the first layer (or input_shape).",
    )
    input_shape: list[int] | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="Keras-style input shape [n_features]; the same as input_dim=n.",
    )

    @field_validator("input_shape")
    @classmethod
    def _input_shape_bounds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not 1 <= v[0] <= MAX_INPUT_DIM:
            raise ValueError(f"input_shape must be [n] with 1 <= n <= {MAX_INPUT_DIM}")
        return v

    @model_validator(mode="after")
    def _one_input_width(self) -> _LayerBase:
        if self.input_dim is not None and self.input_shape is not None:
            if self.input_shape[0] != self.input_dim:
                raise ValueError("give input_dim or input_shape, not two different widths")
        return self

    @property
    def declared_input(self) -> int | None:
        if self.input_dim is not None:
            return self.input_dim
        return self.input_shape[0] if self.input_shape is not None else None


class Dense(_LayerBase):
    """Fully connected layer: `activation(x @ kernel + bias)`."""

    type: Literal["dense"] = Field(description="Layer type.")
    units: int = Field(ge=1, le=MAX_UNITS, description="Number of output units.")
    activation: ActivationName = Field("linear", description="Activation applied to the output.")
    alpha: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="Slope for leaky_relu (default 0.2, as keras.activations.leaky_relu) "
        "or alpha for elu (default 1.0).",
    )
    use_bias: bool = Field(True, description="Whether the layer has a bias vector.")
    kernel_initializer: InitializerName = Field(
        "glorot_uniform", description="Keras initializer name."
    )
    bias_initializer: InitializerName = Field("zeros", description="Keras initializer name.")
    kernel_regularizer: Regularizer | None = Field(None, description="L1/L2 penalty on the kernel.")
    bias_regularizer: Regularizer | None = Field(None, description="L1/L2 penalty on the bias.")
    kernel: list[list[float]] | None = Field(
        None,
        description="Explicit initial kernel in Keras layout [inputs][units] (overrides "
        "kernel_initializer): for teaching, reproduction and warm starts.",
    )
    bias: list[float] | None = Field(
        None, description="Explicit initial bias, one value per unit (overrides bias_initializer)."
    )

    @model_validator(mode="after")
    def _explicit_values(self) -> Dense:
        if self.bias_initializer == "orthogonal":
            raise ValueError(
                "bias_initializer 'orthogonal' needs a 2-D weight; use it as kernel_initializer "
                "and leave the bias 'zeros'"
            )
        if self.kernel is not None:
            if not self.kernel or any(len(row) != self.units for row in self.kernel):
                raise ValueError(
                    f"kernel must be [inputs][units]: every row needs {self.units} values "
                    "(one per unit), as Keras' get_weights()[0]"
                )
        if self.bias is not None:
            if not self.use_bias:
                raise ValueError("bias given but use_bias is false; drop one of them")
            if len(self.bias) != self.units:
                raise ValueError(
                    f"bias needs {self.units} values (one per unit), got {len(self.bias)}"
                )
        return self


class Dropout(_LayerBase):
    """Zeroes a fraction `rate` of inputs in training (scaled by 1/(1-rate)); off at inference."""

    type: Literal["dropout"] = Field(description="Layer type.")
    rate: float = Field(ge=0.0, lt=1.0, description="Fraction of inputs to drop, in [0, 1).")


class Activation(_LayerBase):
    """A standalone activation, as keras.layers.Activation."""

    type: Literal["activation"] = Field(description="Layer type.")
    activation: ActivationName = Field(description="Activation function name.")
    alpha: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="Slope for leaky_relu (default 0.2) or alpha for elu (default 1.0).",
    )


class BatchNormalization(_LayerBase):
    """Keras BatchNormalization: 4 params per feature; moving mean/variance are non-trainable."""

    type: Literal["batch_normalization"] = Field(description="Layer type.")
    momentum: float = Field(
        0.99,
        ge=0.0,
        le=1.0,
        description="Keras momentum of the moving averages (PyTorch's is 1 - this).",
    )
    epsilon: float = Field(
        1e-3, gt=0.0, le=1.0, description="Added to the variance (Keras default 1e-3)."
    )


class LayerNormalization(_LayerBase):
    """Keras LayerNormalization over the features: 2 trainable params per feature."""

    type: Literal["layer_normalization"] = Field(description="Layer type.")
    epsilon: float = Field(
        1e-3, gt=0.0, le=1.0, description="Added to the variance (Keras default 1e-3)."
    )


Layer = Annotated[
    Dense | Dropout | Activation | BatchNormalization | LayerNormalization,
    Field(discriminator="type"),
]

IRIS_NETWORK: dict[str, Any] = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


class NetworkSpec(_Strict):
    """A feed-forward network as a list of layers (Keras Sequential)."""

    model_config = ConfigDict(json_schema_extra={"examples": [IRIS_NETWORK]})

    layers: list[Layer] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        description="Layers in order; the first carries input_dim (or input_shape).",
    )

    @model_validator(mode="after")
    def _shapes(self) -> NetworkSpec:
        first = self.layers[0].declared_input
        if first is None:
            raise ValueError(
                "the first layer needs input_dim (or input_shape: [n]): the number of features, "
                'e.g. {"type": "dense", "units": 8, "input_dim": 4}'
            )
        width = first
        total = 0
        for i, layer in enumerate(self.layers):
            declared = layer.declared_input
            if i > 0 and declared is not None and declared != width:
                raise ValueError(
                    f"layers[{i}] declares input_dim {declared} but the previous layer outputs "
                    f"{width}; remove input_dim from layers after the first"
                )
            if isinstance(layer, Dense):
                if layer.kernel is not None and len(layer.kernel) != width:
                    raise ValueError(
                        f"layers[{i}].kernel has {len(layer.kernel)} rows "
                        f"but the layer has {width} "
                        "inputs; Keras layout is [inputs][units]"
                    )
                total += width * layer.units + (layer.units if layer.use_bias else 0)
                width = layer.units
            elif isinstance(layer, BatchNormalization):
                total += 4 * width
            elif isinstance(layer, LayerNormalization):
                total += 2 * width
        if total > MAX_PARAMS:
            raise ValueError(
                f"the network would have {format_count(total)} parameters; the limit is "
                f"{format_count(MAX_PARAMS)}: use fewer or narrower layers"
            )
        names = [layer.name for layer in self.layers if layer.name is not None]
        if len(names) != len(set(names)):
            raise ValueError("layer names must be unique")
        return self

    @property
    def input_dim(self) -> int:
        dim = self.layers[0].declared_input
        assert dim is not None  # checked by the validator
        return dim

    def widths(self) -> list[int]:
        """Output width of each layer."""
        width, out = self.input_dim, []
        for layer in self.layers:
            if isinstance(layer, Dense):
                width = layer.units
            out.append(width)
        return out

    @property
    def output_units(self) -> int:
        return self.widths()[-1]

    @property
    def output_activation(self) -> str:
        """The last layer's activation: "linear" unless the last layer is a dense or activation."""
        last = self.layers[-1]
        return last.activation if isinstance(last, (Dense, Activation)) else "linear"

    def layer_names(self) -> list[str]:
        """Keras-style names: dense, dense_1, dropout, ...; explicit names are kept."""
        taken = {layer.name for layer in self.layers if layer.name is not None}
        counters: dict[str, int] = {}
        names = []
        for layer in self.layers:
            if layer.name is not None:
                names.append(layer.name)
                continue
            while True:
                n = counters.get(layer.type, 0)
                counters[layer.type] = n + 1
                candidate = layer.type if n == 0 else f"{layer.type}_{n}"
                if candidate not in taken:
                    break
            taken.add(candidate)
            names.append(candidate)
        return names


# ---------------------------------------------------------------- optimizers

_LR = "Step size (Keras name; the old alias lr is accepted)."


class _OptimizerBase(_Strict):
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
    weight_decay: float = Field(
        0.004, ge=0.0, le=1.0, description="Decoupled weight decay (Keras 0.004)."
    )


AnyOptimizer = Annotated[SGD | Adagrad | RMSprop | Adam | AdamW, Field(discriminator="name")]


# ---------------------------------------------------------------- training


class EarlyStoppingConfig(_Strict):
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


class TrainingConfig(_Strict):
    """How to train: Keras' compile() and fit() arguments in one object."""

    model_config = ConfigDict(json_schema_extra={"examples": [IRIS_TRAINING]})

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
