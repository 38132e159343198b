"""An affine network that ignores the conditioning."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import DTypeLike
from .._misc import validate_int
from .base import AbstractNetwork, check_inputs, promote_dtypes


class LinearNet(AbstractNetwork):
    """$F(x, c_{noise}) = W x + b$, independent of $c_{noise}$.

    For stage functions on Gaussian data, where every stage minimiser is affine in $x$.
    Computation is in `promote_types(x.dtype, parameter dtype)`; the output is cast back to `x.dtype`.
    """

    weight: Float[Array, "dim dim"]
    bias: Float[Array, " dim"]

    def __init__(self, dim: int, *, key: PRNGKeyArray, init_scale: float = 0.0, dtype: DTypeLike | None = None):
        r"""**Arguments:**

        - `dim`: dimension of the data.
        - `key`: PRNG key for the initial parameters.
        - `init_scale`: $W$ and $b$ start as `init_scale` times independent standard normals
          (default 0: $F \equiv 0$).
        - `dtype`: parameter dtype (default: JAX's default float dtype).
        """
        dim = validate_int(dim, "dim")
        init_scale = float(init_scale)
        if not (init_scale >= 0.0 and init_scale < float("inf")):
            raise ValueError(f"`init_scale` must be a finite number >= 0, got {init_scale}.")
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        # One draw for W and b (row-major W, then b): a single random-number kernel to compile.
        draws = np.zeros(dim * (dim + 1), dtype)
        if init_scale > 0.0:
            draws = init_scale * np.asarray(jr.normal(key, (dim * (dim + 1),), dtype=dtype))
        self.weight = jnp.asarray(draws[: dim * dim].reshape(dim, dim))
        self.bias = jnp.asarray(draws[dim * dim :])

    @property
    def dim(self) -> int:
        return self.bias.shape[-1]  # the last axis: stacked stage networks have biases of shape (T, dim)

    def __call__(
        self, x: Float[Array, " dim"], c_noise: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        del key
        x, _ = check_inputs(self, x, c_noise)
        dtype = promote_dtypes(x.dtype, self.weight.dtype)
        out = self.weight.astype(dtype) @ x.astype(dtype) + self.bias.astype(dtype)
        return out.astype(x.dtype)
