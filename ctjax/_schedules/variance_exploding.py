"""The variance-exploding (EDM) schedule."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._custom_types import RealScalarLike
from .._misc import check_fields, finite
from .base import AbstractSchedule


class VarianceExploding(AbstractSchedule):
    r"""$x_t = x_0 + t z$ for $t \in [\sigma_{min}, \sigma_{max}]$ (Karras et al.'s EDM; Song et al.'s CM).

    Time is the noise level itself, so `karras_grid` gives the usual EDM/CM discretisation.
    """

    sigma_min: RealScalarLike = 0.002
    sigma_max: RealScalarLike = 80.0

    def __check_init__(self):
        check_fields(
            self,
            ("sigma_min", "sigma_max"),
            lambda lo, hi: (lo >= 0) & (lo < hi) & finite(hi),
            "VarianceExploding needs 0 <= sigma_min < sigma_max < inf",
        )

    @property
    def t_min(self) -> RealScalarLike:
        return self.sigma_min

    @property
    def t_max(self) -> RealScalarLike:
        return self.sigma_max

    def alpha(self, t: ArrayLike) -> Array:
        return jnp.ones_like(jnp.asarray(t))

    def sigma(self, t: ArrayLike) -> Array:
        return jnp.asarray(t)

    def log_noise(self, t: ArrayLike) -> Array:
        return jnp.log(jnp.asarray(t))

    def time_at_log_noise(self, log_noise: ArrayLike) -> Array:
        return jnp.clip(jnp.exp(jnp.asarray(log_noise)), self.sigma_min, self.sigma_max)


VarianceExploding.__init__.__doc__ = r"""**Arguments:**

- `sigma_min`: the noise level at the data end ($\epsilon$ = 0.002 in EDM and CM).
- `sigma_max`: the noise level at the noise end (80 in EDM and CM).
"""
