"""The PyTorch pieces a spec is built from, through allow-list registries.

Nothing here looks a name up on torch.nn: every activation and initializer a user can name is a
key below, so a spec can only ever build what this file lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Keras' truncated normal draws within 2 stddev; dividing by this restores the intended variance
# (the std of a standard normal truncated to [-2, 2]).
_TRUNC_STD = 0.87962566103423978


def _leaky_relu(alpha: float | None) -> nn.Module:
    return nn.LeakyReLU(0.2 if alpha is None else alpha)  # keras.activations.leaky_relu: 0.2


def _elu(alpha: float | None) -> nn.Module:
    return nn.ELU(1.0 if alpha is None else alpha)


ACTIVATIONS: dict[str, Callable[[float | None], nn.Module | None]] = {
    "linear": lambda _: None,
    "sigmoid": lambda _: nn.Sigmoid(),
    "tanh": lambda _: nn.Tanh(),
    "relu": lambda _: nn.ReLU(),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "selu": lambda _: nn.SELU(),
    "gelu": lambda _: nn.GELU(),  # Keras' gelu default is the exact erf form, as torch's
    "softplus": lambda _: nn.Softplus(),
    "softsign": lambda _: nn.Softsign(),
    "swish": lambda _: nn.SiLU(),
    "silu": lambda _: nn.SiLU(),
    "mish": lambda _: nn.Mish(),
    "relu6": lambda _: nn.ReLU6(),
    "hard_sigmoid": lambda _: nn.Hardsigmoid(),  # Keras 3: relu6(x + 3) / 6
    "softmax": lambda _: nn.Softmax(dim=-1),
}


def make_activation(name: str, alpha: float | None = None) -> nn.Module | None:
    """The activation module for an allow-listed name; None for linear."""
    return ACTIVATIONS[name](alpha)


# Initializers fill a tensor in torch layout (out, in) for kernels, (units,) for biases; fan_in and
# fan_out are Keras' (inputs, units) for kernels. Formulas: keras.initializers.VarianceScaling.
Initializer = Callable[[torch.Tensor, int, int, torch.Generator], None]


def _uniform(limit: Callable[[int, int], float]) -> Initializer:
    def init(t: torch.Tensor, fan_in: int, fan_out: int, g: torch.Generator) -> None:
        bound = limit(fan_in, fan_out)
        nn.init.uniform_(t, -bound, bound, generator=g)

    return init


def _truncated(std: Callable[[int, int], float]) -> Initializer:
    def init(t: torch.Tensor, fan_in: int, fan_out: int, g: torch.Generator) -> None:
        s = std(fan_in, fan_out)
        nn.init.trunc_normal_(t, 0.0, s, -2 * s, 2 * s, generator=g)

    return init


def _constant(value: float) -> Initializer:
    def init(t: torch.Tensor, fan_in: int, fan_out: int, g: torch.Generator) -> None:
        nn.init.constant_(t, value)

    return init


def _random_normal(t: torch.Tensor, fan_in: int, fan_out: int, g: torch.Generator) -> None:
    nn.init.normal_(t, 0.0, 0.05, generator=g)


def _orthogonal(t: torch.Tensor, fan_in: int, fan_out: int, g: torch.Generator) -> None:
    if t.dim() < 2:
        raise ValueError("orthogonal initialization needs a kernel, not a bias")
    nn.init.orthogonal_(t, generator=g)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": _uniform(lambda i, o: math.sqrt(6.0 / (i + o))),
    "glorot_normal": _truncated(lambda i, o: math.sqrt(2.0 / (i + o)) / _TRUNC_STD),
    "he_uniform": _uniform(lambda i, o: math.sqrt(6.0 / i)),
    "he_normal": _truncated(lambda i, o: math.sqrt(2.0 / i) / _TRUNC_STD),
    "lecun_uniform": _uniform(lambda i, o: math.sqrt(3.0 / i)),
    "lecun_normal": _truncated(lambda i, o: math.sqrt(1.0 / i) / _TRUNC_STD),
    "orthogonal": _orthogonal,
    "zeros": _constant(0.0),
    "ones": _constant(1.0),
    "random_normal": _random_normal,
    "random_uniform": _uniform(lambda i, o: 0.05),
    "truncated_normal": _truncated(lambda i, o: 0.05),
}


class Dense(nn.Module):
    """y = activation(x @ W.T + b); weight (units, inputs): the transpose of Keras' kernel."""

    def __init__(
        self,
        in_features: int,
        units: int,
        *,
        use_bias: bool,
        activation: nn.Module | None,
        kernel_penalty: tuple[float, float] | None = None,
        bias_penalty: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(units, in_features))
        self.bias = nn.Parameter(torch.empty(units)) if use_bias else None
        self.activation = activation
        self._activate = activation.forward if activation is not None else None  # see Network
        self.kernel_penalty = kernel_penalty  # (l1, l2) or None
        self.bias_penalty = bias_penalty
        # the dtype of the last output: what autocast really computed in (models/precision.py)
        self.computed_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (batch, units)
        # straight into the instance dict: nn.Module.__setattr__ first looks through parameters,
        # buffers and submodules, ~1 us per layer and call, a tenth of a 1-row prediction's forward
        self.__dict__["computed_dtype"] = y.dtype
        return y if self._activate is None else self._activate(y)

    def penalty(self) -> torch.Tensor | None:
        """Keras L1L2: l1 * sum(|w|) + l2 * sum(w**2) for each regularized tensor."""
        total: torch.Tensor | None = None
        for tensor, factors in ((self.weight, self.kernel_penalty), (self.bias, self.bias_penalty)):
            if tensor is None or factors is None:
                continue
            l1, l2 = factors
            term = None
            if l1:
                term = l1 * tensor.abs().sum()
            if l2:
                sq = l2 * tensor.square().sum()
                term = sq if term is None else term + sq
            if term is not None:
                total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        units, inputs = self.weight.shape
        return f"inputs={inputs}, units={units}, bias={self.bias is not None}"


@dataclass(frozen=True)
class TokenBatch:
    """A batch of documents as flat (row, id) pairs: what the CPU training loop hands the
    category_encoding layer instead of a padded matrix (models/tokens.py, `TokenLists.flat`).
    A batch's documents hold ~10x fewer ids than its padded matrix has slots (Reuters: ~75 k ids
    against 512 x the longest document), and every slot is memory to allocate and fill."""

    rows: torch.Tensor  # int64 (ids,): the row in the batch each id belongs to
    ids: torch.Tensor  # int64 (ids,)
    size: int  # rows in the batch (documents may be empty)


# What a network's forward takes: a (batch, features) float tensor, padded token ids, or a batch
# of documents as (row, id) pairs for a network that starts with category_encoding.
NetworkInput = torch.Tensor | TokenBatch


class CategoryEncoding(nn.Module):
    """Keras CategoryEncoding: token ids -> (batch, num_tokens) float32.

    Takes padded ids, (batch, length) int64 with -1 on padding slots (a -1 adds nothing, as in
    Keras on the torch backend), or a `TokenBatch`. count adds a 1 per occurrence; multi_hot clips
    those counts at 1; one_hot is multi_hot over a single id per row. No parameters, no gradient.
    The padded form is written with scatter_add and clamp only, so it exports to ONNX
    (ScatterElements, opset 16+). In training the encoded batch is written into one buffer kept
    from step to step (the step's backward is done before the next forward refills it), so a step
    allocates no (batch, num_tokens) tensor; in eval mode each call gets its own, so concurrent
    predictions never share one.
    """

    def __init__(self, num_tokens: int, output_mode: str) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.output_mode = output_mode
        self._buffer: torch.Tensor | None = None  # (rows, num_tokens), training only

    def _zeros(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.zeros((rows, self.num_tokens), device=like.device)
        buffer = self._buffer
        if buffer is None or buffer.shape[0] < rows or buffer.device != like.device:
            buffer = self._buffer = torch.empty((rows, self.num_tokens), device=like.device)
        return buffer[:rows].zero_()

    def forward(self, ids: torch.Tensor | TokenBatch) -> torch.Tensor:
        if isinstance(ids, TokenBatch):
            out = self._zeros(ids.size, ids.ids)  # (batch, num_tokens)
            flat = ids.rows * self.num_tokens + ids.ids
            one = torch.ones((), device=out.device)
            out.view(-1).index_put_((flat,), one, accumulate=self.output_mode == "count")
            return out
        marks = (ids >= 0).to(torch.float32)  # (batch, length): 0 on padding
        slots = ids.clamp(min=0)  # padding lands on id 0 with a mark of 0: no effect
        counts = self._zeros(ids.shape[0], ids).scatter_add_(1, slots, marks)
        return counts if self.output_mode == "count" else counts.clamp_(max=1.0)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, output_mode={self.output_mode}"


class BatchNormalization(nn.Module):
    """Keras BatchNormalization for (batch, features).

    Written out rather than nn.BatchNorm1d because Keras' moving variance uses the biased batch
    variance and accepts a batch of one row (torch raises); the momentum is Keras' (0.99 keeps
    99% of the old average).
    """

    moving_mean: torch.Tensor
    moving_variance: torch.Tensor

    def __init__(self, features: int, *, momentum: float, epsilon: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.epsilon = epsilon
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("moving_mean", torch.zeros(features))
        self.register_buffer("moving_variance", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics and normalization in float32 whatever the input: under bf16 autocast the
        # Dense before this returns bf16, whose batch mean would neither fit the float32 moving
        # averages (lerp_ refuses mixed dtypes) nor be precise enough to keep; the result goes
        # back in the input's dtype, as torch's own batch_norm does under autocast.
        xf = x.float()
        if self.training:
            var, mean = torch.var_mean(xf, dim=0, unbiased=False)
            with torch.no_grad():
                self.moving_mean.lerp_(mean.detach(), 1.0 - self.momentum)
                self.moving_variance.lerp_(var.detach(), 1.0 - self.momentum)
        else:
            mean, var = self.moving_mean, self.moving_variance
        y = (xf - mean) * torch.rsqrt(var + self.epsilon) * self.gamma + self.beta
        return y.to(x.dtype)


class LayerNormalization(nn.LayerNorm):
    """Keras LayerNormalization over the last axis: nn.LayerNorm (same parameters and state dict),
    its statistics in float32 under bf16 autocast and its result in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.to(x.dtype)


class Network(nn.Module):
    """A built spec: `layers` in order, the output activation split off the last layer.

    `logits(x)` stops before the output activation so softmax/sigmoid losses can be computed fused
    (log-softmax, BCE-with-logits); `forward(x)` applies it and is what predictions return.
    """

    def __init__(
        self, layers: nn.Sequential, output_activation: nn.Module | None, output_name: str
    ):
        super().__init__()
        self.layers = layers
        self.output_activation = output_activation
        self.output_activation_name = output_name
        # each layer's forward called directly: nn.Module.__call__'s hook bookkeeping costs a few
        # microseconds per layer and call, a tenth of a small network's training step
        self._forwards = [layer.forward for layer in layers]

    def logits(self, x: NetworkInput) -> torch.Tensor:
        for forward in self._forwards:
            x = forward(x)
        assert isinstance(x, torch.Tensor)  # every layer returns a tensor
        return x

    def forward(self, x: NetworkInput) -> torch.Tensor:
        y = self.logits(x)
        return y if self.output_activation is None else self.output_activation(y)

    def penalty(self) -> torch.Tensor:
        """The sum of the layers' L1/L2 penalties (0 without regularizers)."""
        total: torch.Tensor | None = None
        for layer in self.layers:
            if isinstance(layer, Dense):
                term = layer.penalty()
                if term is not None:
                    total = term if total is None else total + term
        return total if total is not None else next(self.parameters()).new_zeros(())

    @property
    def has_penalty(self) -> bool:
        return any(
            isinstance(m, Dense) and (m.kernel_penalty or m.bias_penalty) for m in self.layers
        )
