"""TrigFlow (Lu and Song 2024)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._custom_types import RealScalarLike
from .._misc import positive_field
from .base import AbstractSchedule


class TrigFlow(AbstractSchedule):
    r"""$x_t = \cos(t) x_0 + \sin(t) \sigma_d z$ for $t \in [0, \pi/2]$ (sCM's TrigFlow).

    The noise level is $\sigma_d \tan t$; EDM's $\sigma$ corresponds to $t = \arctan(\sigma/\sigma_d)$.
    """

    sigma_data: RealScalarLike = eqx.field(default=0.5, converter=positive_field("sigma_data"))

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return float(jnp.pi / 2)

    def alpha(self, t: ArrayLike) -> Array:
        # cos(pi/2) rounds to a tiny negative number in float32; the signal coefficient is >= 0. The clip
        # is kept out of the derivative (bit for bit the same value), so that d alpha/dt = -sin t at pi/2 too.
        c = jnp.cos(jnp.asarray(t))
        return c - jax.lax.stop_gradient(c - jnp.maximum(c, 0.0))

    def sigma(self, t: ArrayLike) -> Array:
        return jnp.asarray(self.sigma_data * jnp.sin(jnp.asarray(t)))

    def log_noise(self, t: ArrayLike) -> Array:
        # log(sigma_d tan t), as log(sigma) - log(alpha): +inf at pi/2, where alpha is clipped to 0.
        return jnp.log(self.sigma(t)) - jnp.log(self.alpha(t))

    def time_at_log_noise(self, log_noise: ArrayLike) -> Array:
        return jnp.clip(jnp.arctan(jnp.exp(jnp.asarray(log_noise)) / self.sigma_data), 0.0, self.t_max)


TrigFlow.__init__.__doc__ = r"""**Arguments:**

- `sigma_data`: the data standard deviation $\sigma_d$ (0.5 in sCM).
"""
