"""Exact denoiser, score and probability-flow velocity for a (target, schedule) pair."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._misc import check_point, check_time
from .._schedules import AbstractSchedule
from .._targets import AbstractTarget


def _coefficients(schedule: AbstractSchedule, t, x, with_derivatives: bool = False):
    if with_derivatives:
        coeffs = schedule.coefficients(t)
    else:
        coeffs = (schedule.alpha(t), schedule.sigma(t))
    return tuple(jnp.asarray(c).astype(x.dtype) for c in coeffs)


def _prepare(target, schedule, t, x, time_name: str = "t"):
    if not isinstance(target, AbstractTarget):
        raise TypeError(
            f"`target` must be a ctjax target (Gaussian, GaussianMixture, Empirical), got {type(target).__name__}."
        )
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(f"`schedule` must be a ctjax schedule, got {type(schedule).__name__}.")
    return check_time(schedule, t, time_name), check_point(x, target.dim)


def denoiser(target: AbstractTarget, schedule: AbstractSchedule, t: ArrayLike, x: ArrayLike) -> Float[Array, " dim"]:
    r"""$D(x, t) = E[x_0 \mid x_t = x]$ for one point `x` of shape `(dim,)` at scalar time `t`."""
    t, x = _prepare(target, schedule, t, x)
    a, s = _coefficients(schedule, t, x)
    return target.posterior_mean(x, a, s)


def score(target: AbstractTarget, schedule: AbstractSchedule, t: ArrayLike, x: ArrayLike) -> Float[Array, " dim"]:
    r"""$\nabla_x \log p_t(x) = (\alpha D - x)/\sigma^2$ (Tweedie)."""
    t, x = _prepare(target, schedule, t, x)
    a, s = _coefficients(schedule, t, x)
    return target.marginal_score(x, a, s)


def velocity(target: AbstractTarget, schedule: AbstractSchedule, t: ArrayLike, x: ArrayLike) -> Float[Array, " dim"]:
    r"""The probability-flow ODE $dx/dt = \dot\alpha D + \dot\sigma E[z \mid x_t = x]$,
    with $E[z \mid x] = (x - \alpha D)/\sigma$ (taken as 0 where $\sigma = 0$)."""
    t, x = _prepare(target, schedule, t, x)
    a, s, da, ds = _coefficients(schedule, t, x, with_derivatives=True)
    d = target.posterior_mean(x, a, s)
    s_safe = jnp.where(s > 0, s, 1.0)
    eps = jnp.where(s > 0, (x - a * d) / s_safe, 0.0)
    return da * d + ds * eps
