"""An empirical (Dirac-mixture) target: a data set."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import as_float_array, check_finite, check_value, finite
from .base import AbstractTarget, cast_like


class Empirical(AbstractTarget):
    r"""$\sum_i w_i \delta_{p_i}$: a data set as a distribution, with the exact posterior
    $E[x_0 \mid x] = \sum_i \mathrm{softmax}_i(\log w_i - \|x - \alpha p_i\|^2 / 2\sigma^2)\, p_i$.

    Memory per query is linear in the number of points (one matrix-vector product, no pairwise
    differences), so data sets of $10^4$ points in $10^3$ dimensions are fine; batch queries with
    `jax.lax.map(..., batch_size=...)` to bound memory. It has no density: `log_prob` raises.
    """

    points: Float[Array, "N dim"]
    log_weights: Float[Array, " N"]
    sq_norms: Float[Array, " N"]

    def __init__(self, points: ArrayLike, weights: ArrayLike | None = None):
        """**Arguments:**

        - `points`: shape `(N, d)`, the atoms $p_i$ (for example a data set).
        - `weights`: optional shape `(N,)`, non-negative, summing to 1; uniform by default.
        """
        points = as_float_array(points, "points")
        if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
            raise ValueError(
                f"`points` must be a non-empty (N, d) array (N points of dimension d), got shape {tuple(points.shape)}."
            )
        points = check_finite(points, "points")
        num = points.shape[0]
        if weights is None:
            log_weights = jnp.full((num,), -np.log(num), dtype=points.dtype)
        else:
            weights = as_float_array(weights, "weights", points.dtype)
            if weights.shape != (num,):
                raise ValueError(f"`weights` must have shape ({num},), one per point; got {tuple(weights.shape)}.")
            weights = check_value(
                weights,
                lambda w: (finite(w) & (w >= 0)).all() & (abs(w.sum() - 1.0) <= 1e-5),
                "`weights` must be finite, non-negative and sum to 1",
                show=False,
            )
            log_weights = jnp.log(weights)
        self.points = points
        self.log_weights = log_weights
        self.sq_norms = jnp.sum(points**2, axis=-1)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    def mean(self) -> Float[Array, " dim"]:
        return jnp.exp(self.log_weights) @ self.points

    def covariance(self) -> Float[Array, "dim dim"]:
        centred = self.points - self.mean()[None, :]
        return jnp.einsum("n,ni,nj->ij", jnp.exp(self.log_weights), centred, centred)

    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        idx = jr.categorical(key, self.log_weights, shape=(int(num),))
        return self.points[idx]

    def _logits(self, x, a, s):
        """Log posterior weights up to a constant in i: log w_i + (a x.p_i - a^2 |p_i|^2 / 2) / s^2."""
        x, points, log_w, sq = cast_like(x, self.points, self.log_weights, self.sq_norms)
        s_safe = jnp.where(s > 0, s, 1.0)
        return x, points, log_w + (a * (points @ x) - 0.5 * a**2 * sq) / s_safe**2

    def posterior_weights(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " N"]:
        r"""$P(x_0 = p_i \mid \alpha x_0 + \sigma z = x)$."""
        return jax.nn.softmax(self._logits(x, alpha, sigma)[2])

    def posterior_mean(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        sigma = jnp.asarray(sigma)
        x, points, logits = self._logits(x, alpha, sigma)
        mean = jax.nn.softmax(logits) @ points
        # At zero noise x is a data point itself: x0 = x / alpha.
        return jnp.where(sigma > 0, mean, x / alpha)

    def posterior_covariance(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, "dim dim"]:
        sigma = jnp.asarray(sigma)
        x, points, logits = self._logits(x, alpha, sigma)
        w = jax.nn.softmax(logits)
        centred = points - (w @ points)[None, :]
        cov = jnp.einsum("n,ni,nj->ij", w, centred, centred)
        return jnp.where(sigma > 0, cov, jnp.zeros_like(cov))

    def sample_posterior(
        self, key: PRNGKeyArray, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike, num: int
    ) -> Float[Array, "num dim"]:
        r"""Atoms drawn by the posterior weights; at zero noise every draw is $x/\alpha$."""
        sigma = jnp.asarray(sigma)
        x, points, logits = self._logits(x, alpha, sigma)
        idx = jr.categorical(key, logits, shape=(int(num),))
        at_zero = jnp.broadcast_to((x / jnp.asarray(alpha).astype(x.dtype))[None, :], (int(num), self.dim))
        return jnp.where(sigma > 0, points[idx], at_zero)

    def marginal_log_prob(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
        sigma = self._require_noise(sigma, "marginal_log_prob")
        x, _, logits = self._logits(x, alpha, sigma)
        d = x.shape[-1]
        return jax.nn.logsumexp(logits) - 0.5 * jnp.sum(x**2) / sigma**2 - 0.5 * d * jnp.log(2 * jnp.pi * sigma**2)

    def marginal_score(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        sigma = self._require_noise(sigma, "marginal_score")
        x = cast_like(x)[0]
        return jnp.asarray((alpha * self.posterior_mean(x, alpha, sigma) - x) / jnp.asarray(sigma) ** 2)

    @staticmethod
    def _require_noise(sigma: ArrayLike, what: str) -> Array:
        return check_value(
            jnp.asarray(sigma),
            lambda s: s > 0,
            f"Empirical.{what} needs sigma > 0: a Dirac mixture has no density (nor score) at zero "
            "noise; evaluate it at a positive noise level",
            show=False,
        )
