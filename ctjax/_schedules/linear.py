"""The linear interpolant (rectified flow / flow matching path)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .base import AbstractSchedule


class LinearInterpolant(AbstractSchedule):
    r"""$x_t = (1 - t) x_0 + t z$ on $[0, 1]$: $\alpha_0 = \sigma_1 = 1$, $\alpha_1 = \sigma_0 = 0$.

    Both ends are degenerate: the noise level is 0 at $t = 0$ and infinite at $t = 1$.
    """

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return 1.0

    def alpha(self, t: ArrayLike) -> Array:
        return 1.0 - jnp.asarray(t)

    def sigma(self, t: ArrayLike) -> Array:
        return jnp.asarray(t)

    def log_noise(self, t: ArrayLike) -> Array:
        t = jnp.asarray(t)
        return jnp.log(t) - jnp.log1p(-t)

    def time_at_log_noise(self, log_noise: ArrayLike) -> Array:
        return jax.nn.sigmoid(jnp.asarray(log_noise))
