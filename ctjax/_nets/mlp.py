"""A time-conditioned residual MLP."""

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
from .embeddings import AbstractEmbedding, FourierEmbedding, SinusoidalEmbedding


def make_embedding(embedding, embedding_features: int) -> tuple[eqx.Module, int]:
    """Resolve `"fourier"`/`"sinusoidal"`/a module into (module, its number of output features)."""
    if isinstance(embedding, str):
        embedding_features = validate_int(embedding_features, "embedding_features", minimum=2)
        if embedding_features % 2:
            raise ValueError(f"`embedding_features` must be even (half cosines, half sines), got {embedding_features}.")
        if embedding == "fourier":
            embedding = FourierEmbedding(embedding_features)
        elif embedding == "sinusoidal":
            embedding = SinusoidalEmbedding(embedding_features)
        else:
            raise ValueError(f'`embedding` must be "fourier", "sinusoidal" or an embedding module, got {embedding!r}.')
    if not (isinstance(embedding, eqx.Module) and callable(embedding)):
        raise ValueError(
            f"`embedding` must be an Equinox module mapping a scalar to a vector, got {type(embedding).__name__}."
        )
    out = jax.eval_shape(embedding, jnp.zeros((), jnp.float32))
    if not (hasattr(out, "shape") and len(out.shape) == 1 and out.shape[0] >= 1):
        raise ValueError(
            f"`embedding` must map a scalar to a vector of shape (num_features,), got {getattr(out, 'shape', out)}."
        )
    return embedding, int(out.shape[0])


class _ResidualBlock(eqx.Module):
    r"""$h + W_2\,\mathrm{drop}(\mathrm{SiLU}(W_1 \mathrm{SiLU}(h) + P e))$."""

    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear
    cond_proj: eqx.nn.Linear

    def __init__(self, width: int, dtype, *, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        self.linear1 = eqx.nn.Linear(width, width, dtype=dtype, key=k1)
        self.linear2 = eqx.nn.Linear(width, width, dtype=dtype, key=k2)
        self.cond_proj = eqx.nn.Linear(width, width, dtype=dtype, key=k3)

    def __call__(self, h: Array, cond: Array, rate: float, keep: Array | None) -> Array:
        u = jax.nn.silu(self.linear1(jax.nn.silu(h)) + self.cond_proj(cond))
        return h + self.linear2(apply_dropout(u, rate, keep))


class MLP(AbstractNetwork):
    r"""A time-conditioned residual MLP $F_\theta(x, c_{noise})$.

    $e = \mathrm{Lin}(\mathrm{SiLU}(\mathrm{Lin}(\mathrm{emb}(c_{noise}))))$ (width `width`),
    $h_0 = \mathrm{Lin}(x)$, then `depth` additive-conditioning residual blocks

    $h \leftarrow h + W_2\,\mathrm{drop}(\mathrm{SiLU}(W_1 \mathrm{SiLU}(h) + P\,\mathrm{SiLU}(e)))$

    (each with its own $W_1, W_2, P$ and biases), and $F = \mathrm{Lin}(\mathrm{SiLU}(h))$. The output
    layer starts at zero, so a fresh network is $F \equiv 0$ and a consistency function built on it
    starts at $c_{skip} x$.

    Computation is in `promote_types(x.dtype, parameter dtype)`; the output is cast back to `x.dtype`.
    """

    embedding: eqx.Module
    cond_in: eqx.nn.Linear
    cond_out: eqx.nn.Linear
    inp: eqx.nn.Linear
    blocks: tuple[_ResidualBlock, ...]
    out: eqx.nn.Linear
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        width: int = 128,
        depth: int = 4,
        embedding: Literal["fourier", "sinusoidal"] | AbstractEmbedding | eqx.Module = "fourier",
        embedding_features: int = 64,
        dropout: float = 0.0,
        *,
        key: PRNGKeyArray,
        dtype: DTypeLike | None = None,
    ):
        r"""**Arguments:**

        - `dim`: dimension of the data.
        - `width`: hidden width.
        - `depth`: number of residual blocks (0 allowed: then $F = \mathrm{Lin}(\mathrm{SiLU}(\mathrm{Lin}(x)))$,
          ignoring $c_{noise}$).
        - `embedding`: `"fourier"` (`FourierEmbedding(embedding_features)`, scale 16), `"sinusoidal"`
          (`SinusoidalEmbedding(embedding_features)`), or any module mapping a scalar to a vector.
        - `embedding_features`: output size of a named embedding (ignored for a module).
        - `dropout`: dropout rate inside each residual block, used only when a `key` is passed to `__call__`.
        - `key`: PRNG key for the initial parameters.
        - `dtype`: parameter dtype (default: JAX's default float dtype).
        """
        dim = validate_int(dim, "dim")
        width = validate_int(width, "width")
        depth = validate_int(depth, "depth", minimum=0)
        self.dropout = validate_dropout(dropout)
        self.embedding, num_features = make_embedding(embedding, embedding_features)

        def build(key):
            k_cond1, k_cond2, k_in, k_out, k_blocks = jr.split(key, 5)
            return (
                eqx.nn.Linear(num_features, width, dtype=dtype, key=k_cond1),
                eqx.nn.Linear(width, width, dtype=dtype, key=k_cond2),
                eqx.nn.Linear(dim, width, dtype=dtype, key=k_in),
                tuple(_ResidualBlock(width, dtype, key=k) for k in jr.split(k_blocks, depth)),
                eqx.nn.Linear(width, dim, dtype=dtype, key=k_out),
            )

        self.cond_in, self.cond_out, self.inp, self.blocks, out = init_layers(build, key)
        self.out = zero_layer(out)

    @property
    def dim(self) -> int:
        return int(self.inp.in_features)

    def __call__(
        self, x: Float[Array, " dim"], c_noise: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        x, c_noise = check_inputs(self, x, c_noise)
        dtype = promote_dtypes(x.dtype, param_dtype(self))
        net = cast_floating(self, dtype)
        emb = jnp.asarray(net.embedding(c_noise)).astype(dtype)  # pyright: ignore[reportCallIssue]
        cond = jax.nn.silu(net.cond_out(jax.nn.silu(net.cond_in(emb))))
        h = net.inp(x.astype(dtype))
        masks = dropout_masks(key, self.dropout, [h.shape] * len(net.blocks))
        for block, keep in zip(net.blocks, masks):
            h = block(h, cond, self.dropout, keep)
        return net.out(jax.nn.silu(h)).astype(x.dtype)
