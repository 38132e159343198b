"""The continuous variance-preserving (DDPM / score-SDE) schedule."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._custom_types import RealScalarLike
from .._misc import check_fields, finite
from .base import AbstractSchedule


class VariancePreserving(AbstractSchedule):
    r"""$\bar\alpha(t) = \exp(-B(t))$, $B(t) = \beta_{min} t + \tfrac12(\beta_{max} - \beta_{min}) t^2$,
    $\alpha = \sqrt{\bar\alpha}$, $\sigma = \sqrt{1 - \bar\alpha}$ (Song et al.'s VP SDE, linear $\beta$).
    """

    beta_min: RealScalarLike = 0.1
    beta_max: RealScalarLike = 20.0
    t_start: RealScalarLike = 0.0
    t_end: RealScalarLike = 1.0

    def __check_init__(self):
        check_fields(
            self,
            ("beta_min", "beta_max"),
            lambda lo, hi: (lo >= 0) & (lo <= hi) & (hi > 0) & finite(hi),
            "VariancePreserving needs 0 <= beta_min <= beta_max < inf with beta_max > 0",
        )
        check_fields(
            self,
            ("t_start", "t_end"),
            lambda lo, hi: (lo >= 0) & (lo < hi) & finite(hi),
            "VariancePreserving needs 0 <= t_start < t_end < inf",
        )

    @property
    def t_min(self) -> RealScalarLike:
        return self.t_start

    @property
    def t_max(self) -> RealScalarLike:
        return self.t_end

    def integrated_beta(self, t: ArrayLike) -> Array:
        r"""$B(t) = \int_0^t \beta$, so that $\bar\alpha(t) = e^{-B(t)}$."""
        t = jnp.asarray(t)
        return jnp.asarray(self.beta_min * t + 0.5 * (jnp.asarray(self.beta_max) - self.beta_min) * t**2)

    def alpha(self, t: ArrayLike) -> Array:
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t: ArrayLike) -> Array:
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def log_noise(self, t: ArrayLike) -> Array:
        return 0.5 * jnp.log(jnp.expm1(self.integrated_beta(t)))

    def time_at_log_noise(self, log_noise: ArrayLike) -> Array:
        big_b = jax.nn.softplus(2 * jnp.asarray(log_noise))  # B = log(1 + n^2)
        # Root of beta_min t + (db/2) t^2 = B, in the form that is stable for db -> 0.
        db = jnp.asarray(self.beta_max) - self.beta_min
        t = 2 * big_b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * db * big_b))
        return jnp.clip(t, self.t_start, self.t_end)


VariancePreserving.__init__.__doc__ = r"""**Arguments:**

- `beta_min`, `beta_max`: the linear $\beta(t)$ of the VP SDE (0.1 and 20 in score-SDE).
- `t_start`, `t_end`: the time range (`t_min`, `t_max`); at `t_start = 0` the noise level is 0.
"""
