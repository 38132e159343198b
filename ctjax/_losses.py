"""Distances between student and teacher outputs, and per-interval weightings.

Every distance reduces over the data dimensions by `reduction`: `"sum"` (the default: $\\|r\\|^2$,
$\\|r\\|$, the convention of Li, Huang and Wei, of iCT's pseudo-Huber and of ECT's norm) or
`"mean"` (divide the squared norm by $d$: $\tfrac1d\\|r\\|^2$, the RMS, as `mean_flat` in Song et
al.'s CT/CD code and the $1/D$ of sCM). The two differ by the factor $d$ inside the norm; with Adam
that rescales the loss but hardly the training, except through pseudo-Huber's $c$, whose meaning
depends on it.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._misc import choice_field, non_negative_field, optional


REDUCTIONS = ("sum", "mean")


class AbstractDistance(eqx.Module):
    """$d(r)$ of a residual $r$ = student - teacher, for one example."""

    @abc.abstractmethod
    def __call__(self, residual: ArrayLike) -> Array:
        """The distance for a residual of shape `(dim,)`."""


def _squared_norm(r: Array, reduction: str) -> Array:
    return jnp.sum(r**2) if reduction == "sum" else jnp.mean(r**2)


def _safe_sqrt(sq: Array) -> Array:
    # The gradient of the square root at 0 is undefined; define it as 0 instead of NaN. (A NaN
    # argument must stay NaN: `sq == 0` is False for it, where `sq > 0` would have hidden it as 0.)
    zero = sq == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def _safe_norm(r: Array) -> Array:
    return _safe_sqrt(jnp.sum(r**2))


class SquaredL2(AbstractDistance):
    r"""$d(r) = \|r\|_2^2$ (the objective of Li, Huang and Wei and of Song et al.'s CT), or
    $\tfrac1d\|r\|_2^2$ with `reduction="mean"` (Song et al.'s code)."""

    reduction: str = eqx.field(static=True, default="sum", converter=choice_field("reduction", REDUCTIONS))

    def __call__(self, residual: ArrayLike) -> Array:
        return _squared_norm(jnp.asarray(residual), self.reduction)


class L2(AbstractDistance):
    r"""$d(r) = \|r\|_2$ (ECT's default, pseudo-Huber with $c = 0$), or the RMS $\|r\|_2/\sqrt d$ with
    `reduction="mean"`."""

    reduction: str = eqx.field(static=True, default="sum", converter=choice_field("reduction", REDUCTIONS))

    def __call__(self, residual: ArrayLike) -> Array:
        return _safe_sqrt(_squared_norm(jnp.asarray(residual), self.reduction))


class PseudoHuber(AbstractDistance):
    r"""iCT's pseudo-Huber metric on the vector norm, $d(r) = \sqrt{\|r\|_2^2 + c^2} - c$.

    It is rotation invariant, $\approx \|r\|^2/(2c)$ for small residuals and $\approx \|r\|$ for
    large ones. `c=None` uses iCT's $c = 0.00054 \sqrt{d}$ for data dimension $d$; $c = 0$ is the
    $\ell_2$ norm (`L2`), with gradient 0 rather than NaN at $r = 0$ (also for a traced $c$). With
    `reduction="mean"` the norm is the RMS: $\sqrt{\|r\|^2/d + c^2} - c$.
    """

    c: float | None = eqx.field(
        default=None,
        converter=optional(non_negative_field("c", "PseudoHuber needs c >= 0 (or None for 0.00054 sqrt(d))")),
    )
    reduction: str = eqx.field(static=True, default="sum", converter=choice_field("reduction", REDUCTIONS))

    def __call__(self, residual: ArrayLike) -> Array:
        r = jnp.asarray(residual)
        c = 0.00054 * jnp.sqrt(r.shape[-1]) if self.c is None else self.c
        c = jnp.asarray(c, dtype=r.dtype)
        return _safe_sqrt(_squared_norm(r, self.reduction) + c**2) - c


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
