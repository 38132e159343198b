r"""Networks of two times, $F_\theta(x, c_s, c_t)$: the average velocity of a flow map."""

import abc
from typing import ClassVar, Literal, TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import DTypeLike
from .._misc import as_float_array, validate_int
from .base import (
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
from .mlp import _ResidualBlock, make_embedding


def _scalar(c: ArrayLike, name: str) -> Array:
    c = as_float_array(c, name)
    if c.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar, got shape {tuple(c.shape)}; networks act on one example: use jax.vmap."
        )
    return c


class AbstractTwoTimeNetwork(eqx.Module):
    r"""A network $F_\theta(x, c_s, c_t)$ of one point $x \in \mathbb{R}^d$ and two scalar time
    conditionings (the start and the end of a jump of a flow map). The output has the shape and
    dtype of `x`; dropout only with a `key`. Use `jax.vmap` for a batch."""

    if TYPE_CHECKING:
        dim: ClassVar[int]
    else:
        dim: eqx.AbstractVar[int]
        """Dimension $d$ of the input and output."""

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, " dim"], c_s: ArrayLike, c_t: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        """$F_\\theta(x, c_s, c_t)$ for one point `x` `(dim,)` and scalar conditionings `c_s`, `c_t`."""


class TwoTimeMLP(AbstractTwoTimeNetwork):
    r"""The residual MLP of `MLP` conditioned on two times:

    $e = \mathrm{Lin}(\mathrm{SiLU}(\mathrm{Lin}([\mathrm{emb}(c_s), \mathrm{emb}(c_s - c_t)])))$, then
    $h_0 = \mathrm{Lin}(x)$, `depth` residual blocks with additive conditioning $P\,\mathrm{SiLU}(e)$, and
    $F = \mathrm{Lin}(\mathrm{SiLU}(h))$, whose output layer starts at zero (a fresh flow map is the identity).

    The second time enters as the gap $c_s - c_t$, MeanFlow's best-measured conditioning $(t, t - r)$:
    the diagonal $s = t$ (the instantaneous velocity) is then one fixed value of that input.
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
        depth: int = 3,
        embedding: Literal["fourier", "sinusoidal"] | AbstractEmbedding | eqx.Module = "sinusoidal",
        embedding_features: int = 64,
        dropout: float = 0.0,
        *,
        key: PRNGKeyArray,
        dtype: DTypeLike | None = None,
    ):
        r"""**Arguments:** as for `MLP` (`embedding` embeds each time separately; its features are
        concatenated), with a smooth `"sinusoidal"` default: the training losses differentiate the
        network in time."""
        dim = validate_int(dim, "dim")
        width = validate_int(width, "width")
        depth = validate_int(depth, "depth", minimum=0)
        self.dropout = validate_dropout(dropout)
        self.embedding, num_features = make_embedding(embedding, embedding_features)

        def build(key):
            k_cond1, k_cond2, k_in, k_out, k_blocks = jr.split(key, 5)
            return (
                eqx.nn.Linear(2 * num_features, width, dtype=dtype, key=k_cond1),
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
        self, x: Float[Array, " dim"], c_s: ArrayLike, c_t: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        x, _ = check_inputs(self, x, 0.0)  # type: ignore[arg-type]  (the shape check of `x` only)
        c_s, c_t = (_scalar(c, name) for c, name in ((c_s, "c_s"), (c_t, "c_t")))
        dtype = promote_dtypes(x.dtype, param_dtype(self))
        net = cast_floating(self, dtype)
        embed = net.embedding
        emb = jnp.concatenate([jnp.asarray(embed(c_s)), jnp.asarray(embed(c_s - c_t))]).astype(dtype)  # pyright: ignore
        cond = jax.nn.silu(net.cond_out(jax.nn.silu(net.cond_in(emb))))
        h = net.inp(x.astype(dtype))
        masks = dropout_masks(key, self.dropout, [h.shape] * len(net.blocks))
        for block, keep in zip(net.blocks, masks):
            h = block(h, cond, self.dropout, keep)
        return net.out(jax.nn.silu(h)).astype(x.dtype)
