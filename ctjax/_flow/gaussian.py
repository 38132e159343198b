"""The closed-form probability-flow map of a Gaussian target."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._schedules import AbstractSchedule
from .._targets import Gaussian
from .fields import _coefficients, _prepare


def gaussian_flow_factors(eigvals: ArrayLike, alpha_from, sigma_from, alpha_to, sigma_to) -> Array:
    r"""Per eigen-direction factors of the Gaussian flow,
    $\rho_i = \sqrt{(\alpha_u^2\lambda_i + \sigma_u^2)/(\alpha_t^2\lambda_i + \sigma_t^2)}$."""
    lam = jnp.asarray(eigvals)
    return jnp.sqrt((alpha_to**2 * lam + sigma_to**2) / (alpha_from**2 * lam + sigma_from**2))


def gaussian_flow_map(
    target: Gaussian, schedule: AbstractSchedule, x: ArrayLike, t_from: ArrayLike, t_to: ArrayLike
) -> Float[Array, " dim"]:
    r"""Closed form of the flow for $N(\mu, \Sigma)$ data (theory.md section 7.3):
    $\Phi_{t \to u}(x) = \alpha_u \mu + C_u^{1/2} C_t^{-1/2} (x - \alpha_t \mu)$, $C_t = \alpha_t^2\Sigma + \sigma_t^2 I$."""
    if not isinstance(target, Gaussian):
        raise TypeError(
            f"gaussian_flow_map needs a Gaussian target, got {type(target).__name__}; use flow_map for other targets."
        )
    t_from, x = _prepare(target, schedule, t_from, x, "t_from")
    t_to, _ = _prepare(target, schedule, t_to, x, "t_to")
    a_t, s_t = _coefficients(schedule, t_from, x)
    a_u, s_u = _coefficients(schedule, t_to, x)
    mu, eigvecs, eigvals = (arr.astype(x.dtype) for arr in (target.loc, target.eigvecs, target.eigvals))
    rho = gaussian_flow_factors(eigvals, a_t, s_t, a_u, s_u)
    return a_u * mu + eigvecs @ (rho * (eigvecs.T @ (x - a_t * mu)))
