"""The abstract Gaussian interpolant x_t = alpha(t) x0 + sigma(t) z."""

import abc
from typing import ClassVar, TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import DTypeLike, RealScalarLike
from .._misc import check_value, check_values, finite, is_concrete


def vp_coefficients(log_noise: ArrayLike) -> tuple[Array, Array]:
    """(cos theta, sin theta) with tan theta = exp(log_noise): the variance-preserving pair
    with the same noise level. Stable at log_noise = -inf (1, 0) and +inf (0, 1)."""
    lam = jnp.asarray(log_noise)
    return jnp.exp(-0.5 * jax.nn.softplus(2 * lam)), jnp.exp(-0.5 * jax.nn.softplus(-2 * lam))


def karras_noise_levels(noise_min: RealScalarLike, noise_max: RealScalarLike, num: int, rho: float = 7.0) -> Array:
    r"""Karras et al.'s rho-grid of `num` noise levels, ascending from `noise_min` to `noise_max`:

    $n_i = (n_{min}^{1/\rho} + \tfrac{i}{N-1}(n_{max}^{1/\rho} - n_{min}^{1/\rho}))^\rho$.
    """
    if int(num) < 2:
        raise ValueError(f"`num` must be at least 2, got {num}.")
    noise_min, noise_max = check_values(
        ("noise_min", "noise_max"),
        (noise_min, noise_max),
        lambda lo, hi: (lo >= 0) & (lo < hi) & finite(hi),
        "Need 0 <= noise_min < noise_max < inf",
    )
    frac = jnp.linspace(0.0, 1.0, int(num))
    lo = jnp.asarray(noise_min) ** (1.0 / rho)
    hi = jnp.asarray(noise_max) ** (1.0 / rho)
    levels = (lo + frac * (hi - lo)) ** rho
    # Pin the ends exactly: the boundary condition and the curriculum tests rely on them.
    return levels.at[0].set(noise_min).at[-1].set(noise_max)


class AbstractSchedule(eqx.Module):
    r"""A Gaussian interpolant $x_t = \alpha(t) x_0 + \sigma(t) z$, data at `t_min`, noise at `t_max`.

    Every schedule reduces to the variance-exploding one through $y = x/\alpha$ with noise level
    $n = \sigma/\alpha$; ctjax's ground truth only needs the log noise level
    $\lambda(t) = \log(\sigma(t)/\alpha(t))$ and its inverse.

    A schedule provides `t_min` and `t_max` (the data and noise ends of its time range) and the
    primitives `alpha`, `sigma`, `log_noise` and `time_at_log_noise`; the other methods are built on them.
    """

    if TYPE_CHECKING:
        # An AbstractVar creates no dataclass field at run time, but type checkers take it for one
        # (a constructor argument of every schedule); to them these are class attributes.
        t_min: ClassVar[RealScalarLike]
        t_max: ClassVar[RealScalarLike]
    else:
        t_min: eqx.AbstractVar[RealScalarLike]
        t_max: eqx.AbstractVar[RealScalarLike]

    @abc.abstractmethod
    def alpha(self, t: ArrayLike) -> Array:
        r"""Signal coefficient $\alpha(t)$."""

    @abc.abstractmethod
    def sigma(self, t: ArrayLike) -> Array:
        r"""Noise coefficient $\sigma(t)$."""

    @abc.abstractmethod
    def time_at_log_noise(self, log_noise: ArrayLike) -> Array:
        r"""The time $t$ with $\log(\sigma/\alpha)(t)$ = `log_noise`, clipped to [t_min, t_max]."""

    def interpolate(self, t: ArrayLike, x0: ArrayLike, z: ArrayLike) -> Array:
        r"""$x_t = \alpha(t) x_0 + \sigma(t) z$ (any shapes that broadcast), in the dtype of `x0`."""
        x0 = jnp.asarray(x0)
        return self.alpha(t).astype(x0.dtype) * x0 + self.sigma(t).astype(x0.dtype) * jnp.asarray(z, x0.dtype)

    @abc.abstractmethod
    def log_noise(self, t: ArrayLike) -> Array:
        r"""$\lambda(t) = \log \sigma(t) - \log \alpha(t)$; $-\infty$ where $\sigma = 0$, $+\infty$ where $\alpha = 0$."""

    def noise(self, t: ArrayLike) -> Array:
        r"""The variance-exploding noise level $\sigma(t)/\alpha(t)$."""
        return jnp.exp(self.log_noise(t))

    def time_at_noise(self, noise: ArrayLike) -> Array:
        r"""Inverse of `noise`: the time whose noise level $\sigma/\alpha$ is `noise`."""
        return self.time_at_log_noise(jnp.log(noise))

    def coefficients(self, t: ArrayLike) -> tuple[Array, Array, Array, Array]:
        r"""$(\alpha, \sigma, \dot\alpha, \dot\sigma)$ at `t`, derivatives by one `jax.jvp`."""
        t = jnp.asarray(t)
        (a, s), (da, ds) = jax.jvp(lambda u: (self.alpha(u), self.sigma(u)), (t,), (jnp.ones_like(t),))
        return a, s, da, ds

    def uniform_grid(self, num: int, dtype: DTypeLike | None = None) -> Float[Array, " num"]:
        """`num` equally spaced times from `t_min` to `t_max` (in `dtype`, default JAX's float)."""
        if int(num) < 2:
            raise ValueError(f"`num` must be at least 2, got {num}.")
        return jnp.linspace(self.t_min, self.t_max, int(num), dtype=dtype)

    def karras_grid(
        self,
        num: int,
        rho: float = 7.0,
        noise_min: RealScalarLike | None = None,
        noise_max: RealScalarLike | None = None,
    ) -> Float[Array, " num"]:
        """Times of the Karras rho-grid in noise level, ascending; the ends default to the
        schedule's noise levels at `t_min` and `t_max` (pass them where those are 0 or infinite)."""
        pin_min, pin_max = noise_min is None, noise_max is None
        if noise_min is None:
            noise_min = self.noise(self.t_min)
        if noise_max is None:
            noise_max = check_value(
                self.noise(self.t_max),
                finite,
                f"{type(self).__name__} has infinite noise level at t_max; pass a finite `noise_max`",
                show=False,
            )
        times = jnp.clip(
            self.time_at_noise(karras_noise_levels(noise_min, noise_max, num, rho)), self.t_min, self.t_max
        )
        # The inverse map rounds; the ends of the default grid are the schedule's ends exactly.
        if pin_min:
            times = times.at[0].set(self.t_min)
        if pin_max:
            times = times.at[-1].set(self.t_max)
        return times

    def __check_init__(self):
        # For a schedule with a fixed range (a user's, say); the built-in ones whose range comes from
        # their fields check those fields, traced or not, in their own `__check_init__`.
        if is_concrete((self.t_min, self.t_max)) and not float(self.t_min) < float(self.t_max):
            raise ValueError(
                f"{type(self).__name__}: need t_min < t_max, got [{float(self.t_min)}, {float(self.t_max)}]."
            )
