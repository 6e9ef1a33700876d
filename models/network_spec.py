"""The network spec: a Keras Sequential's layers, validated strictly.

Names and defaults follow Keras (see docs/keras-defaults.md for each default against PyTorch's and
the reason wherever fitserve differs). Every number is bounded and finite, unknown keys are
rejected, and strings are never coerced to numbers, so a spec that validates is one we can build.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LAYERS = 100
MAX_UNITS = 65_536
MAX_INPUT_DIM = 1_000_000
# A category_encoding layer's vocabulary: its dense output is batch x num_tokens floats on the
# training device (512 x 1M is 2 GB), so the vocabulary is bounded like a feature count.
MAX_NUM_TOKENS = 1_000_000
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

_LAYER_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"


def format_count(n: int) -> str:
    """4.0e10 rather than Python's 4.0e+10: how the limits read in messages."""
    mantissa, _, exponent = f"{n:.1e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


class StrictModel(BaseModel):
    """The base of every spec model (layers, network, training config)."""

    # strict: "0.1" is not a number here; allow_inf_nan: NaN/inf never reach the optimizer
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Regularizer(StrictModel):
    """Keras `L1L2`: adds `l1 * sum(|w|) + l2 * sum(w**2)` to the loss."""

    l1: float = Field(
        0.0, ge=0.0, le=100.0, description="L1 factor: adds l1 * sum(|w|) to the loss."
    )
    l2: float = Field(
        0.0, ge=0.0, le=100.0, description="L2 factor: adds l2 * sum(w**2) to the loss."
    )


class _LayerBase(StrictModel):
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
    input_shape: list[Annotated[int, Field(ge=1, le=MAX_INPUT_DIM)]] | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="Keras-style input shape [n_features]; the same as input_dim=n.",
    )

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


# The Keras layer classes an activation layer can be, and the activations each computes.
KERAS_ACTIVATION_LAYERS: dict[str, tuple[str, ...]] = {
    "Activation": (),  # any
    "ReLU": ("relu", "relu6", "leaky_relu"),
    "LeakyReLU": ("leaky_relu",),
    "ELU": ("elu",),
    "Softmax": ("softmax",),
}


class Activation(_LayerBase):
    """A standalone activation, as keras.layers.Activation (or ReLU, LeakyReLU, ELU, Softmax)."""

    type: Literal["activation"] = Field(description="Layer type.")
    activation: ActivationName = Field(description="Activation function name.")
    alpha: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="Slope for leaky_relu (default 0.2) or alpha for elu (default 1.0).",
    )
    keras_class: Literal["Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"] = Field(
        "Activation",
        description="The Keras layer class it is written back as in Keras JSON (an imported "
        "ReLU stays a ReLU); the computation is the activation's either way.",
    )

    @model_validator(mode="after")
    def _class_fits(self) -> Activation:
        allowed = KERAS_ACTIVATION_LAYERS[self.keras_class]
        if allowed and self.activation not in allowed:
            raise ValueError(
                f"keras_class {self.keras_class} computes {' or '.join(allowed)}, not "
                f"{self.activation}; use keras_class Activation"
            )
        return self


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


class CategoryEncoding(StrictModel):
    """Keras `CategoryEncoding`: a document of token ids -> a (num_tokens,) vector.

    Only as the first layer: it turns each row of a token-list dataset (or prediction) into the
    dense vector the next layer reads, batch by batch on the training device. `multi_hot` puts a 1
    at every id present, `count` the number of times it occurs, `one_hot` a 1 at the row's single
    id (one id per row, as Keras' one_hot of a (batch, 1) input). Ids must lie in
    0..num_tokens-1; an empty document is the all-zero vector (multi_hot, count), as in Keras.
    No parameters.
    """

    type: Literal["category_encoding"] = Field(description="Layer type.")
    name: str | None = Field(
        None,
        pattern=_LAYER_NAME,
        description="Layer name; default as Keras: category_encoding, ... (unique).",
    )
    num_tokens: int = Field(
        ge=1,
        le=MAX_NUM_TOKENS,
        description=f"Vocabulary size: token ids run 0..num_tokens-1 (at most {MAX_NUM_TOKENS:,}).",
        examples=[10000],
    )
    output_mode: Literal["multi_hot", "count", "one_hot"] = Field(
        "multi_hot",
        description="multi_hot: 1 for each id present; count: occurrences of each id; one_hot: "
        "exactly one id per row. Keras' names and default.",
    )

    @property
    def declared_input(self) -> int | None:
        return None  # token lists of any length; the width it outputs is num_tokens


Layer = Annotated[
    Dense | Dropout | Activation | BatchNormalization | LayerNormalization | CategoryEncoding,
    Field(discriminator="type"),
]

IRIS_NETWORK: dict[str, Any] = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


def _network_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema states the first layer's rules too: it carries input_dim or input_shape,
    or is the category_encoding layer, which only the first may be. (In JSON Schema 2020-12,
    `items` covers only what follows prefixItems.)"""
    schema["examples"] = [IRIS_NETWORK]
    layers = schema["properties"]["layers"]
    encoding = {"properties": {"type": {"const": "category_encoding"}}}
    first = {"anyOf": [{"required": ["input_dim"]}, {"required": ["input_shape"]}, encoding]}
    layers["prefixItems"] = [{"allOf": [layers["items"], first]}]
    layers["items"] = {"allOf": [layers["items"], {"not": encoding}]}


class NetworkSpec(StrictModel):
    """A feed-forward network as a list of layers (Keras Sequential)."""

    model_config = ConfigDict(json_schema_extra=_network_schema)

    layers: list[Layer] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        description="Layers in order; the first carries input_dim (or input_shape). Rules the "
        "schema can't state: a later layer's input_dim, if given, equals the previous layer's "
        f"width; layer names are unique; at most {format_count(MAX_PARAMS)} parameters.",
    )

    @model_validator(mode="after")
    def _shapes(self) -> NetworkSpec:
        for i, layer in enumerate(self.layers[1:], start=1):
            if isinstance(layer, CategoryEncoding):
                raise ValueError(
                    f"layers[{i}] is a category_encoding layer; it encodes token ids and can only "
                    "be the first layer"
                )
        encoding = self.encoding
        first = encoding.num_tokens if encoding is not None else self.layers[0].declared_input
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
    def encoding(self) -> CategoryEncoding | None:
        """The first layer when it encodes token ids: the network then reads token lists."""
        first = self.layers[0]
        return first if isinstance(first, CategoryEncoding) else None

    @property
    def input_dim(self) -> int:
        """The width of the vector the first dense-style layer reads: the declared input, or
        num_tokens after a category_encoding layer (whose own input is token lists)."""
        encoding = self.encoding
        dim = encoding.num_tokens if encoding is not None else self.layers[0].declared_input
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
