"""The abstract target distribution and its Gaussian-noised posterior."""

import abc
from typing import ClassVar, TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


class AbstractTarget(eqx.Module):
    r"""A data distribution $p_{data}$ of $x_0 \in \mathbb{R}^d$ whose noised posterior is known exactly.

    The primitive is the posterior given $x = \alpha x_0 + \sigma z$, $z \sim N(0, I)$, in
    $(\alpha, \sigma)$ form: stable where $\alpha = 0$ (pure noise) and, for targets with a
    density, where $\sigma = 0$. The variance-exploding posterior is the case $\alpha = 1$.
    Methods act on one point `x` of shape `(dim,)`; vmap them for a batch.
    """

    if TYPE_CHECKING:  # an AbstractVar would be a constructor argument to type checkers
        dim: ClassVar[int]
    else:
        dim: eqx.AbstractVar[int]
        """Dimension $d$ of the data."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num dim"]:
        """`num` independent draws, shape `(num, dim)`. (The key comes first, as in `jax.random`.)"""

    @abc.abstractmethod
    def mean(self) -> Float[Array, " dim"]:
        """$E[x_0]$."""

    @abc.abstractmethod
    def covariance(self) -> Float[Array, "dim dim"]:
        """$Cov[x_0]$."""

    @abc.abstractmethod
    def marginal_log_prob(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
        r"""$\log p(x)$ for $x = \alpha x_0 + \sigma z$."""

    @abc.abstractmethod
    def marginal_score(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        r"""$\nabla_x \log p(x)$ for $x = \alpha x_0 + \sigma z$."""

    @abc.abstractmethod
    def posterior_mean(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, " dim"]:
        r"""$E[x_0 \mid \alpha x_0 + \sigma z = x]$ (the denoiser)."""

    @abc.abstractmethod
    def posterior_covariance(self, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Float[Array, "dim dim"]:
        r"""$Cov[x_0 \mid \alpha x_0 + \sigma z = x]$."""

    @abc.abstractmethod
    def sample_posterior(
        self, key: PRNGKeyArray, x: ArrayLike, alpha: ArrayLike, sigma: ArrayLike, num: int
    ) -> Float[Array, "num dim"]:
        r"""`num` independent draws of $x_0 \mid \alpha x_0 + \sigma z = x$, shape `(num, dim)`, in the dtype
        of `x`. (The key comes first, as in `sample`.)"""

    def log_prob(self, x: ArrayLike) -> Array:
        r"""$\log p_{data}(x)$."""
        return self.marginal_log_prob(x, 1.0, 0.0)

    def ve_posterior_mean(self, y: ArrayLike, noise: ArrayLike) -> Float[Array, " dim"]:
        r"""$E[x_0 \mid x_0 + n z = y]$: the variance-exploding posterior that every schedule reduces to."""
        return self.posterior_mean(y, 1.0, noise)

    def ve_posterior_covariance(self, y: ArrayLike, noise: ArrayLike) -> Float[Array, "dim dim"]:
        r"""$Cov[x_0 \mid x_0 + n z = y]$."""
        return self.posterior_covariance(y, 1.0, noise)


def cast_like(x: ArrayLike, *arrays: ArrayLike) -> tuple[Array, ...]:
    """Cast `arrays` to the floating dtype of `x` (the query point sets the precision)."""
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    return tuple(jnp.asarray(a).astype(dtype) for a in (x, *arrays))
