"""A small time-conditioned U-Net for images given as flat vectors."""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import DTypeLike
from .._misc import validate_int
from .base import (
    AbstractNetwork,
    apply_dropout,
    cast_floating,
    check_inputs,
    dropout_masks,
    init_layers,
    param_dtype,
    promote_dtypes,
    validate_dropout,
    zero_layer,
)
from .embeddings import AbstractEmbedding
from .mlp import make_embedding


def _group_norm(channels: int, dtype) -> eqx.nn.GroupNorm:
    """GroupNorm with gcd(channels, 8) groups (8 groups whenever the channel count allows it)."""
    return eqx.nn.GroupNorm(math.gcd(channels, 8), channels, dtype=dtype)


def _conv3x3(c_in: int, c_out: int, dtype, *, key: PRNGKeyArray, stride: int = 1) -> eqx.nn.Conv2d:
    return eqx.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, dtype=dtype, key=key)


class _ResBlock(eqx.Module):
    r"""$x' = \mathrm{skip}(x) + \mathrm{Conv}(\mathrm{drop}(\mathrm{SiLU}(\mathrm{GN}(
    \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(x))) + P e))))$, the shift $P e$ broadcast over pixels."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    cond_proj: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, cond_features: int, dtype, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = _group_norm(c_in, dtype)
        self.conv1 = _conv3x3(c_in, c_out, dtype, key=k1)
        self.cond_proj = eqx.nn.Linear(cond_features, c_out, dtype=dtype, key=k2)
        self.norm2 = _group_norm(c_out, dtype)
        self.conv2 = _conv3x3(c_out, c_out, dtype, key=k3)
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, dtype=dtype, key=k4)

    def __call__(self, x: Array, cond: Array, rate: float, keep: Array | None) -> Array:
        """`x`: (H, W, C_in), channels last, as all activations inside the ConvNet."""
        h = _conv(self.conv1, jax.nn.silu(_norm(self.norm1, x)))
        h = h + self.cond_proj(cond)[None, None, :]
        h = _conv(self.conv2, apply_dropout(jax.nn.silu(_norm(self.norm2, h)), rate, keep))
        return (x if self.skip is None else _conv(self.skip, x)) + h


def _upsample(x: Array) -> Array:
    """Nearest-neighbour 2x upsampling of an (H, W, C) array."""
    return jnp.repeat(jnp.repeat(x, 2, axis=0), 2, axis=1)


def _conv(layer: eqx.nn.Conv2d, x: Array, im2col: bool | None = None) -> Array:
    """`layer` (square kernel k, stride s, padding (k - 1) / 2) applied to an (H, W, C_in) array.

    On CPU (`im2col=None` there, or `im2col=True`) as one matrix product of the k^2 shifted copies
    of `x` (im2col) with the reshaped kernel: XLA's CPU backend runs `lax.conv` and its gradients
    inside a loop (`lax.scan`, as in `fit`) about 9-17x slower than this form (jax-ml/jax#12868, in
    either layout; benchmarks/conv_in_scan.py). Elsewhere as a channels-last `lax.conv`, which GPUs
    run natively without the k^2 copy of the input."""
    k, stride = layer.kernel_size[0], layer.stride[0]
    pad = (k - 1) // 2
    # The layers built by ConvNet; anything else would be computed wrongly, so fail loudly.
    assert layer.kernel_size == (k, k) and layer.stride == (stride, stride) and k % 2 == 1
    assert tuple(layer.padding) == ((pad, pad), (pad, pad)) and layer.dilation == (1, 1) and layer.groups == 1
    if im2col is None:
        im2col = jax.default_backend() == "cpu"
    if im2col:
        height, width, c_in = x.shape
        h_out, w_out = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
        padded = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)))
        shifts = [
            padded[i : i + stride * (h_out - 1) + 1 : stride, j : j + stride * (w_out - 1) + 1 : stride]
            for i in range(k)
            for j in range(k)
        ]
        patches = shifts[0] if k == 1 else jnp.concatenate(shifts, axis=-1)  # (H', W', k k C_in), order (i, j, c)
        kernel = jnp.transpose(layer.weight, (2, 3, 1, 0)).reshape(k * k * c_in, -1)  # (O, I, k, k) -> (k k I, O)
        out = patches @ kernel
    else:
        out = jax.lax.conv_general_dilated(
            x[None],
            layer.weight,
            (stride, stride),
            ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "OIHW", "NHWC"),
        )[0]
    return out if layer.bias is None else out + layer.bias.reshape(1, 1, -1)


def _norm(layer: eqx.nn.GroupNorm, x: Array) -> Array:
    """`layer`'s group normalisation of an (H, W, C) array (statistics over pixels and the channels of a group)."""
    height, width, channels = x.shape
    groups = layer.groups
    # Statistics in at least float32 (as Equinox's GroupNorm), whatever the activations' precision.
    y = x.astype(promote_dtypes(x.dtype, jnp.float32)).reshape(height, width, groups, channels // groups)
    mean = jnp.mean(y, axis=(0, 1, 3), keepdims=True)
    var = jnp.var(y, axis=(0, 1, 3), keepdims=True)
    y = ((y - mean) * jax.lax.rsqrt(var + layer.eps)).reshape(x.shape)
    if layer.channelwise_affine:
        y = y * layer.weight[None, None, :] + layer.bias[None, None, :]  # pyright: ignore[reportOptionalSubscript]
    return y.astype(x.dtype)


class ConvNet(AbstractNetwork):
    r"""A two-level time-conditioned U-Net on images of shape `image_shape = (C, H, W)`, flattened.

    With $c$ = `channels`: 3x3 conv in ($C \to c$), a residual block ($c \to c$) at full resolution
    whose output is kept as the skip; a stride-2 3x3 conv down; residual blocks $c \to 2c$ and
    $2c \to 2c$ at half resolution; nearest-neighbour 2x upsampling and a 3x3 conv; concatenation with
    the skip and a residual block ($3c \to c$); GroupNorm, SiLU and a zero-initialised 3x3 conv out
    ($c \to C$), so a fresh network is $F \equiv 0$.

    Residual blocks are pre-activation (GroupNorm, SiLU, conv) with the time embedding added as a
    per-channel shift after the first conv, and dropout before the second. The time embedding is
    $e = \mathrm{SiLU}(\mathrm{Lin}(\mathrm{SiLU}(\mathrm{Lin}(\mathrm{emb}(c_{noise})))))$ of width $4c$.
    GroupNorms use gcd(channels, 8) groups. Activations are kept channels-last; on CPU each
    convolution is one matrix product of the shifted copies of its input (im2col), because
    `lax.conv` inside `fit`'s `lax.scan` is 9-17x slower there (benchmarks/conv_in_scan.py); other
    backends use `lax.conv`.

    Computation is in `promote_types(x.dtype, parameter dtype)`; the output is cast back to `x.dtype`.
    """

    embedding: eqx.Module
    cond_in: eqx.nn.Linear
    cond_out: eqx.nn.Linear
    conv_in: eqx.nn.Conv2d
    block_high: _ResBlock
    down: eqx.nn.Conv2d
    block_low1: _ResBlock
    block_low2: _ResBlock
    up: eqx.nn.Conv2d
    block_up: _ResBlock
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        channels: int = 32,
        embedding_features: int = 64,
        dropout: float = 0.0,
        *,
        key: PRNGKeyArray,
        embedding: Literal["fourier", "sinusoidal"] | AbstractEmbedding | eqx.Module = "fourier",
        dtype: DTypeLike | None = None,
    ):
        """**Arguments:**

        - `image_shape`: `(C, H, W)` with `H` and `W` even; inputs have `dim = C * H * W` and are
          reshaped in C order (as `x.reshape(image_shape)`).
        - `channels`: base channel count $c$ (the half-resolution level has $2c$).
        - `embedding_features`: output size of a named embedding (ignored for a module).
        - `dropout`: dropout rate inside each residual block, used only when a `key` is passed to `__call__`.
        - `key`: PRNG key for the initial parameters.
        - `embedding`: `"fourier"` (scale 16), `"sinusoidal"`, or any module mapping a scalar to a vector.
        - `dtype`: parameter dtype (default: JAX's default float dtype).
        """
        try:
            shape = tuple(int(s) for s in image_shape)
        except (TypeError, ValueError):
            shape = ()
        if len(shape) != 3 or min(shape) < 1 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(
                f"`image_shape` must be (C, H, W) with C >= 1 and H, W even and positive, got {image_shape!r}."
            )
        self.image_shape = (shape[0], shape[1], shape[2])
        c_img = shape[0]
        c = validate_int(channels, "channels")
        self.dropout = validate_dropout(dropout)
        self.embedding, num_features = make_embedding(embedding, embedding_features)
        cond = 4 * c

        def build(key):
            keys = jr.split(key, 10)
            return (
                eqx.nn.Linear(num_features, cond, dtype=dtype, key=keys[0]),
                eqx.nn.Linear(cond, cond, dtype=dtype, key=keys[1]),
                _conv3x3(c_img, c, dtype, key=keys[2]),
                _ResBlock(c, c, cond, dtype, key=keys[3]),
                _conv3x3(c, c, dtype, key=keys[4], stride=2),
                _ResBlock(c, 2 * c, cond, dtype, key=keys[5]),
                _ResBlock(2 * c, 2 * c, cond, dtype, key=keys[6]),
                _conv3x3(2 * c, 2 * c, dtype, key=keys[7]),
                _ResBlock(3 * c, c, cond, dtype, key=keys[8]),
                _group_norm(c, dtype),
                _conv3x3(c, c_img, dtype, key=keys[9]),
            )

        (
            self.cond_in,
            self.cond_out,
            self.conv_in,
            self.block_high,
            self.down,
            self.block_low1,
            self.block_low2,
            self.up,
            self.block_up,
            self.norm_out,
            conv_out,
        ) = init_layers(build, key)
        self.conv_out = zero_layer(conv_out)

    @property
    def dim(self) -> int:
        return math.prod(self.image_shape)

    def __call__(
        self, x: Float[Array, " dim"], c_noise: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        x, c_noise = check_inputs(self, x, c_noise)
        dtype = promote_dtypes(x.dtype, param_dtype(self))
        net = cast_floating(self, dtype)
        emb = jnp.asarray(net.embedding(c_noise)).astype(dtype)  # pyright: ignore[reportCallIssue]
        cond = jax.nn.silu(net.cond_out(jax.nn.silu(net.cond_in(emb))))
        _, height, width = self.image_shape
        full, half = (height, width), (height // 2, width // 2)
        blocks = ((net.block_high, full), (net.block_low1, half), (net.block_low2, half), (net.block_up, full))
        shapes = [(*hw, b.conv1.out_channels) for b, hw in blocks]
        m1, m2, m3, m4 = dropout_masks(key, self.dropout, shapes)
        # Channels last inside: each convolution is then a matrix product over the last axis.
        image = jnp.transpose(x.astype(dtype).reshape(self.image_shape), (1, 2, 0))
        h = _conv(net.conv_in, image)
        skip = net.block_high(h, cond, self.dropout, m1)
        h = _conv(net.down, skip)
        h = net.block_low1(h, cond, self.dropout, m2)
        h = net.block_low2(h, cond, self.dropout, m3)
        h = _conv(net.up, _upsample(h))
        h = net.block_up(jnp.concatenate([h, skip], axis=-1), cond, self.dropout, m4)
        out = _conv(net.conv_out, jax.nn.silu(_norm(net.norm_out, h)))
        out = jnp.transpose(out, (2, 0, 1))
        return out.reshape(-1).astype(x.dtype)
