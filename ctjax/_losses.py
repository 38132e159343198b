"""Distances between student and teacher outputs, and per-interval weightings."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._misc import non_negative_field, optional


class AbstractDistance(eqx.Module):
    """$d(r)$ of a residual $r$ = student - teacher, for one example."""

    @abc.abstractmethod
    def __call__(self, residual: ArrayLike) -> Array:
        """The distance for a residual of shape `(dim,)`."""


def _safe_sqrt(sq: Array) -> Array:
    # The gradient of the square root at 0 is undefined; define it as 0 instead of NaN. (A NaN
    # argument must stay NaN: `sq == 0` is False for it, where `sq > 0` would have hidden it as 0.)
    zero = sq == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def _safe_norm(r: Array) -> Array:
    return _safe_sqrt(jnp.sum(r**2))


class SquaredL2(AbstractDistance):
    r"""$d(r) = \|r\|_2^2$ (the objective of Li, Huang and Wei and of Song et al.'s CT)."""

    def __call__(self, residual: ArrayLike) -> Array:
        return jnp.sum(jnp.asarray(residual) ** 2)


class L2(AbstractDistance):
    r"""$d(r) = \|r\|_2$ (ECT's default, pseudo-Huber with $c = 0$)."""

    def __call__(self, residual: ArrayLike) -> Array:
        return _safe_norm(jnp.asarray(residual))


class PseudoHuber(AbstractDistance):
    r"""iCT's pseudo-Huber metric on the vector norm, $d(r) = \sqrt{\|r\|_2^2 + c^2} - c$.

    It is rotation invariant, $\approx \|r\|^2/(2c)$ for small residuals and $\approx \|r\|$ for
    large ones. `c=None` uses iCT's $c = 0.00054 \sqrt{d}$ for data dimension $d$; $c = 0$ is the
    $\ell_2$ norm (`L2`), with gradient 0 rather than NaN at $r = 0$ (also for a traced $c$).
    """

    c: float | None = eqx.field(
        default=None,
        converter=optional(non_negative_field("c", "PseudoHuber needs c >= 0 (or None for 0.00054 sqrt(d))")),
    )

    def __call__(self, residual: ArrayLike) -> Array:
        r = jnp.asarray(residual)
        c = 0.00054 * jnp.sqrt(r.shape[-1]) if self.c is None else self.c
        c = jnp.asarray(c, dtype=r.dtype)
        return _safe_sqrt(jnp.sum(r**2) + c**2) - c


class AbstractWeighting(eqx.Module):
    r"""$\lambda$ of an interval between noise levels $n_{lo} < n_{hi}$."""

    @abc.abstractmethod
    def __call__(self, noise_lo: ArrayLike, noise_hi: ArrayLike) -> Array:
        """The weight of the pair (student at `noise_hi`, teacher at `noise_lo`)."""


class UniformWeighting(AbstractWeighting):
    r"""$\lambda \equiv 1$ (Song et al.'s CT and CD)."""

    def __call__(self, noise_lo: ArrayLike, noise_hi: ArrayLike) -> Array:
        return jnp.ones_like(jnp.asarray(noise_hi))


class InverseDeltaWeighting(AbstractWeighting):
    r"""$\lambda = 1 / (n_{hi} - n_{lo})$ (iCT; ECT's $1/(t - r)$)."""

    def __call__(self, noise_lo: ArrayLike, noise_hi: ArrayLike) -> Array:
        return 1.0 / (jnp.asarray(noise_hi) - jnp.asarray(noise_lo))
