"""A Gaussian mixture target with full covariances."""

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import as_float_array, check_finite, check_shape, check_value, finite
from . import _mixture_math as mm
from .base import AbstractTarget, cast_like


class GaussianMixture(AbstractTarget):
    r"""$\sum_k \pi_k N(\mu_k, \Sigma_k)$ with full, positive definite covariances.

    Responsibilities are computed as a log-sum-exp softmax, so far-apart components are exact.
    """

    log_weights: Float[Array, " K"]
    means: Float[Array, "K dim"]
    covs: Float[Array, "K dim dim"]
    eigvals: Float[Array, "K dim"]
    eigvecs: Float[Array, "K dim dim"]

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: ArrayLike):
        """**Arguments:**

        - `weights`: shape `(K,)`, non-negative, summing to 1.
        - `means`: shape `(K, d)`.
        - `covs`: shape `(K, d, d)` (full), `(K, d)` (diagonals) or `(K,)` (isotropic), each
          symmetric positive definite.
        """
        weights = as_float_array(weights, "weights")
        means = as_float_array(means, "means")
        check_shape(weights, (None,), "weights")
        check_shape(means, (weights.shape[0], None), "means", "One row per mixture component.")
        means = check_finite(means, "means")
        if weights.shape[0] == 0:
            raise ValueError("`weights` must have at least one component.")
        weights = check_value(
            weights, lambda w: finite(w) & (w >= 0), "`weights` must be finite and non-negative", show=False
        )
        weights = check_value(
            weights,
            lambda w: abs(w.sum() - 1.0) <= 1e-5,
            "`weights` must sum to 1; pass weights / weights.sum()",
            show=False,
        )
        num, dim = means.shape
        covs = as_float_array(covs, "covs")
        if covs.ndim == 0 or covs.shape[0] != num:
            raise ValueError(
                f"`covs` must have a leading axis of {num} (one per component): shape ({num}, {dim}, {dim}), "
                f"({num}, {dim}) or ({num},); got {tuple(covs.shape)}."
            )
        parts = [mm.covariance_parts(covs[k], dim, f"covs[{k}]") for k in range(num)]
        self.log_weights = jnp.log(weights)
        self.means = means
        self.covs = jnp.stack([p[0] for p in parts])
        self.eigvals = jnp.stack([p[1] for p in parts])
        self.eigvecs = jnp.stack([p[2] for p in parts])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> Float[Array, " K"]:
        return jnp.exp(self.log_weights)

    def mean(self) -> Float[Array, " dim"]:
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "dim dim"]:
        m = self.mean()
        centred = self.means - m[None, :]
        return jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, centred, centred
        )

    def marginal(self, alpha: ArrayLike, sigma: ArrayLike) -> "GaussianMixture":
        r"""The law of $\alpha x_0 + \sigma z$, again a Gaussian mixture."""
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return GaussianMixture(self.weights, alpha * self.means, alpha**2 * self.covs + sigma**2 * eye[None])

    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        kc, kz = jr.split(key)
        comp = jr.categorical(kc, self.log_weights, shape=(int(num),))
        z = jr.normal(kz, (int(num), self.dim), dtype=self.means.dtype)
        scaled = z * jnp.sqrt(self.eigvals[comp])
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.eigvecs[comp], scaled)

    def _params(self, x):
        return cast_like(x, self.log_weights, self.means, self.eigvals, self.eigvecs)

    def marginal_log_prob(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
        x, *params = self._params(x)
        return mm.log_prob(x, alpha, sigma, *params)

    def marginal_score(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        x, *params = self._params(x)
        return mm.score(x, alpha, sigma, *params)

    def posterior_mean(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        x, *params = self._params(x)
        return mm.posterior_mean(x, alpha, sigma, *params)

    def posterior_covariance(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, "dim dim"]:
        x, *params = self._params(x)
        return mm.posterior_covariance(x, alpha, sigma, *params)

    def responsibilities(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " K"]:
        r"""$P(\text{component } k \mid \alpha x_0 + \sigma z = x)$."""
        x, *params = self._params(x)
        return jax.nn.softmax(mm._terms(x, alpha, sigma, *params)[2])

    def sample_posterior(
        self, key: PRNGKeyArray, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike, num: int
    ) -> Float[Array, "num dim"]:
        r"""A component $k$ by the responsibilities, then a draw from that component's posterior
        $N(m_k, U_k \mathrm{diag}(\lambda_k\sigma^2/(\alpha^2\lambda_k + \sigma^2)) U_k^\top)$."""
        x, *params = self._params(x)
        alpha, sigma = (jnp.asarray(c).astype(x.dtype) for c in (alpha, sigma))
        return mm.sample_posterior(key, int(num), x, alpha, sigma, *params)
