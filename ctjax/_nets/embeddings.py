"""Embeddings of the scalar noise conditioning $c_{noise}$."""

import abc
import math
from typing import ClassVar, TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import DTypeLike
from .._misc import as_float_array, int_field, static_positive_float, validate_int
from .base import promote_dtypes


def _embedding_input(s: ArrayLike, name: str = "s") -> Array:
    """`s` as a scalar array in at least float32 (bf16/f16 inputs are upcast)."""
    s = as_float_array(s, name)
    if s.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar, got shape {tuple(s.shape)}; embeddings act on one value: "
            "use jax.vmap for a batch."
        )
    return s.astype(promote_dtypes(s.dtype, jnp.float32))


def _check_num_features(num_features: int) -> int:
    if isinstance(num_features, int | np.integer) and not isinstance(num_features, bool) and num_features % 2 == 0:
        return validate_int(num_features, "num_features", minimum=2)
    raise ValueError(f"`num_features` must be an even integer >= 2 (half cosines, half sines), got {num_features!r}.")


class AbstractEmbedding(eqx.Module):
    """A map from a scalar $s$ to a feature vector of shape `(num_features,)`.

    Computed in `jnp.promote_types(s.dtype, float32)`: at least float32 even for bf16/f16 inputs.
    """

    if TYPE_CHECKING:  # an AbstractVar would be a constructor argument to type checkers
        num_features: ClassVar[int]
    else:
        num_features: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(self, s: ArrayLike) -> Float[Array, " num_features"]:
        """**Arguments:**

        - `s`: a scalar.

        **Returns:**

        The features, shape `(num_features,)`, dtype `promote_types(s.dtype, float32)`.
        """


class FourierEmbedding(AbstractEmbedding):
    r"""Random Fourier features $[\cos(2\pi f s), \sin(2\pi f s)]$, $f \sim N(0, \mathrm{scale}^2)$.

    The `num_features // 2` frequencies are `scale * jax.random.normal(jax.random.key(seed), (num_features // 2,),
    float32)` (drawn in float32 whatever the input precision, then cast up). They are not stored: they are
    recomputed from the static `seed` at trace time, so they are never trained, checkpointed or averaged
    into an EMA, and become constants under `jax.jit`. The module has no array leaves.

    EDM and consistency models use `scale=16`; iCT uses `scale=0.02` on $c_{noise} = 1000 \cdot \tfrac14 \log n$.
    """

    num_features: int = eqx.field(static=True, converter=_check_num_features)
    scale: float = eqx.field(static=True, default=16.0, converter=static_positive_float("scale"))
    seed: int = eqx.field(static=True, default=0, converter=int_field("seed", minimum=None))

    def frequencies(self, dtype: DTypeLike = jnp.float32) -> Float[Array, " half"]:
        """The frequencies $f$, shape `(num_features // 2,)`, in `dtype`; concrete even under `jax.jit`."""
        with jax.ensure_compile_time_eval():
            base = jr.normal(jr.key(self.seed), (self.num_features // 2,), dtype=jnp.float32)
            return self.scale * base.astype(dtype)

    def __call__(self, s: ArrayLike) -> Float[Array, " num_features"]:
        s = _embedding_input(s)
        arg = (2 * math.pi) * self.frequencies(s.dtype) * s
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)])


class SinusoidalEmbedding(AbstractEmbedding):
    r"""The transformer/DDPM positional embedding $[\cos(\omega_i s), \sin(\omega_i s)]_{i < h}$.

    With $h$ = `num_features // 2`, the frequencies are geometric, $\omega_i = P^{-i/h}$ for
    $P$ = `max_period`: from 1 down to (nearly) $1/P$.
    """

    num_features: int = eqx.field(static=True, converter=_check_num_features)
    max_period: float = eqx.field(static=True, default=10000.0, converter=static_positive_float("max_period"))

    def __call__(self, s: ArrayLike) -> Float[Array, " num_features"]:
        s = _embedding_input(s)
        half = self.num_features // 2
        freqs = jnp.exp((-math.log(self.max_period) / half) * jnp.arange(half, dtype=s.dtype))
        arg = freqs * s
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)])


FourierEmbedding.__init__.__doc__ = """**Arguments:**

- `num_features`: output size, even (half cosines, half sines).
- `scale`: standard deviation of the frequencies.
- `seed`: the integer seed of the frequencies.
"""

SinusoidalEmbedding.__init__.__doc__ = r"""**Arguments:**

- `num_features`: output size, even (half cosines, half sines).
- `max_period`: $P$, the longest period is about $2\pi P$.
"""
