"""A Gaussian target N(mean, cov)."""

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import as_float_array, check_finite, check_shape
from . import _mixture_math as mm
from .base import AbstractTarget, cast_like


class Gaussian(AbstractTarget):
    r"""$N(\mu, \Sigma)$ with $\Sigma = U \mathrm{diag}(\lambda) U^\top$ positive definite.

    Its probability flow is linear and known in closed form (see `gaussian_flow_map`).
    """

    loc: Float[Array, " dim"]
    cov: Float[Array, "dim dim"]
    eigvals: Float[Array, " dim"]
    eigvecs: Float[Array, "dim dim"]

    def __init__(self, mean: ArrayLike, cov: ArrayLike):
        """**Arguments:**

        - `mean`: shape `(d,)`.
        - `cov`: shape `(d, d)` symmetric positive definite; a vector means a diagonal, a scalar
          an isotropic covariance.
        """
        mean = as_float_array(mean, "mean")
        check_shape(mean, (None,), "mean")
        mean = check_finite(mean, "mean")
        cov, eigvals, eigvecs = mm.covariance_parts(cov, mean.shape[0], "cov")
        self.loc = mean
        self.cov = cov
        self.eigvals = eigvals
        self.eigvecs = eigvecs

    @property
    def dim(self) -> int:
        return self.loc.shape[0]

    def mean(self) -> Float[Array, " dim"]:
        return self.loc

    def covariance(self) -> Float[Array, "dim dim"]:
        return self.cov

    def marginal(self, alpha: ArrayLike, sigma: ArrayLike) -> "Gaussian":
        r"""The law of $\alpha x_0 + \sigma z$: $N(\alpha\mu, \alpha^2\Sigma + \sigma^2 I)$."""
        eye = jnp.eye(self.dim, dtype=self.cov.dtype)
        return Gaussian(alpha * self.loc, alpha**2 * self.cov + sigma**2 * eye)

    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        z = jr.normal(key, (int(num), self.dim), dtype=self.loc.dtype)
        return self.loc[None, :] + (z * jnp.sqrt(self.eigvals)[None, :]) @ self.eigvecs.T

    def _params(self, x):
        x, mean, eigvals, eigvecs = cast_like(x, self.loc, self.eigvals, self.eigvecs)
        zero = jnp.zeros((1,), x.dtype)
        return x, (zero, mean[None], eigvals[None], eigvecs[None])

    def marginal_log_prob(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
        x, params = self._params(x)
        return mm.log_prob(x, alpha, sigma, *params)

    def marginal_score(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        x, params = self._params(x)
        return mm.score(x, alpha, sigma, *params)

    def posterior_mean(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        x, params = self._params(x)
        return mm.posterior_mean(x, alpha, sigma, *params)

    def posterior_covariance(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, "dim dim"]:
        x, params = self._params(x)
        return mm.posterior_covariance(x, alpha, sigma, *params)

    def sample_posterior(
        self, key: PRNGKeyArray, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike, num: int
    ) -> Float[Array, "num dim"]:
        r"""Draws from the exact posterior
        $N(D(x), U \mathrm{diag}(\lambda\sigma^2/(\alpha^2\lambda + \sigma^2)) U^\top)$."""
        x, params = self._params(x)
        alpha, sigma = (jnp.asarray(c).astype(x.dtype) for c in (alpha, sigma))
        return mm.sample_posterior(key, int(num), x, alpha, sigma, *params)
