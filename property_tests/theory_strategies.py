"""Strategies and exact NumPy references for the theory properties (test_theory.py).

Stage grids are random subsets of `BASE_STAGES` random increasing times of a random schedule, so that
`ctjax.theory.stage_grid` compiles once per schedule family while the number of stages still varies.
"""

import math
from typing import NamedTuple

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.stats

import ctjax
import ctjax.theory as th

from .strategies import DIM, DISCRETE_STAGES, schedules


BASE_STAGES = 24


class StageGrid(NamedTuple):
    schedule: ctjax.AbstractSchedule
    times: np.ndarray
    alphas: np.ndarray
    sigmas: np.ndarray

    @property
    def num_stages(self) -> int:
        return self.alphas.shape[0]


@st.composite
def base_grids(draw) -> StageGrid:
    """`BASE_STAGES` strictly increasing times of a random schedule and their coefficients.

    Half of the grids start exactly at `t_min` (noise level zero for the linear, TrigFlow and VP
    schedules: only stage 1 may sit there), the others end exactly at `t_max` (alpha = 0 for the
    linear interpolant). `DiscreteVP` grids are subsets of its integer stages 1..64, where the stage
    coefficients are exact.
    """
    schedule = draw(schedules())
    if isinstance(schedule, ctjax.DiscreteVP):
        stages = draw(
            st.lists(st.integers(1, DISCRETE_STAGES), min_size=BASE_STAGES, max_size=BASE_STAGES, unique=True)
        )
        times = np.sort(np.asarray(stages, dtype=np.float64))
    else:
        gaps = np.array([draw(st.floats(0.02, 1.0)) for _ in range(BASE_STAGES)])
        cum = np.cumsum(gaps) / gaps.sum()
        frac = np.concatenate([[0.0], cum[:-1]]) if draw(st.booleans()) else cum
        lo, hi = float(schedule.t_min), float(schedule.t_max)
        times = np.minimum(lo + frac * (hi - lo), hi)
        times[0] = max(times[0], lo)
        if frac[-1] == 1.0:
            times[-1] = hi
    alphas, sigmas = th.stage_grid(schedule, jnp.asarray(times))
    return StageGrid(schedule, times, np.asarray(alphas, np.float64), np.asarray(sigmas, np.float64))


@st.composite
def stage_grids(draw, min_stages: int = 2, max_stages: int = BASE_STAGES) -> StageGrid:
    """A random increasing sub-grid (random number of stages) of a `base_grids` grid."""
    base = draw(base_grids())
    num = draw(st.integers(min_stages, max_stages))
    idx = np.sort(draw(st.lists(st.integers(0, BASE_STAGES - 1), min_size=num, max_size=num, unique=True)))
    return StageGrid(base.schedule, base.times[idx], base.alphas[idx], base.sigmas[idx])


def matrices(dim: int = DIM, bound: float = 2.0):
    """Arbitrary (not necessarily symmetric or invertible) square matrices."""
    return st.lists(st.floats(-bound, bound), min_size=dim * dim, max_size=dim * dim).map(
        lambda v: np.asarray(v).reshape(dim, dim)
    )


# ---------------------------------------------------------------------------------------------
# Exact references (NumPy float64, full matrices; independent of the oracle's eigenbasis recursion)


def gaussian_parts(target: ctjax.Gaussian) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(target.loc, np.float64), np.asarray(target.cov, np.float64)


def marginal_cov(cov: np.ndarray, a: float, s: float) -> np.ndarray:
    r"""$C = a^2\Sigma + s^2 I$, the covariance of $a X_0 + s Z$."""
    return a**2 * cov + s**2 * np.eye(cov.shape[0])


def flow_affine(cov, mean, a_from, s_from, a_to, s_to) -> tuple[np.ndarray, np.ndarray]:
    r"""The Gaussian flow map $\Phi(x) = J x + c$ (theory.md 7.3), $J = C_{to}^{1/2} C_{from}^{-1/2}$."""
    lam, vecs = np.linalg.eigh(cov)
    rho = np.sqrt((a_to**2 * lam + s_to**2) / (a_from**2 * lam + s_from**2))
    J = (vecs * rho[None, :]) @ vecs.T
    return J, a_to * mean - J @ (a_from * mean)


def ddim_affine(cov, mean, a_prev, s_prev, a, s) -> tuple[np.ndarray, np.ndarray]:
    r"""One exact-denoiser DDIM step $x \mapsto r x + b D(x)$ from stage k (a, s) to k-1 (a_prev, s_prev),
    with $D(x) = \mu + a\Sigma C^{-1}(x - a\mu)$: $E[X'_{k-1} | X_k = x]$ (theory.md 1.4, 7.6)."""
    r, b = s_prev / s, a_prev - a * s_prev / s
    gain = a * np.linalg.solve(marginal_cov(cov, a, s), cov).T  # a Sigma C^{-1} (symmetric factors commute)
    return r * np.eye(cov.shape[0]) + b * gain, b * (mean - gain @ (a * mean))


def posterior_cov(cov, a, s) -> np.ndarray:
    r"""$\mathrm{Cov}(X_0 | a X_0 + s Z) = \Sigma - a^2 \Sigma C^{-1} \Sigma$."""
    return cov - a**2 * cov @ np.linalg.solve(marginal_cov(cov, a, s), cov)


def expected_norm(mean: np.ndarray, cov: np.ndarray) -> float:
    r"""$E\|Y\|$ for $Y \sim N(m, V)$ ($V$ PSD), to about 1e-11 relative, by one quadrature:

    $\|y\| = \pi^{-1/2}\int_0^\infty (1 - e^{-w^2\|y\|^2}) w^{-2}\,dw$ and the Laplace transform
    $E e^{-u\|Y\|^2} = \det(I + 2uV)^{-1/2}\exp(-u\, m^\top (I + 2uV)^{-1} m)$.
    """
    cov = 0.5 * (cov + cov.T)
    scale = math.sqrt(float(mean @ mean + np.trace(cov)))
    if scale == 0.0:
        return 0.0
    lam, vecs = np.linalg.eigh(cov / scale**2)
    lam = np.maximum(lam, 0.0)
    m2 = (vecs.T @ (mean / scale)) ** 2

    def integrand(w):
        u = w * w
        log_phi = -0.5 * np.sum(np.log1p(2 * u * lam)) - u * np.sum(m2 / (1 + 2 * u * lam))
        return -math.expm1(log_phi) / u if u > 0 else float(np.sum(lam) + np.sum(m2))

    head, _ = scipy.integrate.quad(integrand, 0.0, 4.0, epsabs=0.0, epsrel=1e-12, limit=200)
    tail, _ = scipy.integrate.quad(integrand, 4.0, np.inf, epsabs=0.0, epsrel=1e-12, limit=200)
    return scale * (head + tail) / math.sqrt(math.pi)


def gaussian_w1_1d(m1: float, s1: float, m2: float, s2: float) -> float:
    r"""$W_1(N(m_1, s_1^2), N(m_2, s_2^2))$ (theory.md 7.5): the monotone coupling moves by $\delta + \sigma Z$,
    $\delta = m_1 - m_2$, $\sigma = |s_1 - s_2|$, so $W_1 = E|\delta + \sigma Z|$."""
    delta, sigma = m1 - m2, abs(s1 - s2)
    if sigma == 0.0:
        return abs(delta)
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(delta**2) / (2 * sigma**2)) + delta * (
        1 - 2 * float(scipy.stats.norm.cdf(-delta / sigma))
    )


def karras_levels(noise_min: float, noise_max: float, num: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al.'s rho-grid, ascending, in NumPy."""
    frac = np.arange(num, dtype=np.float64) / (num - 1)
    lo, hi = noise_min ** (1 / rho), noise_max ** (1 / rho)
    levels = (lo + frac * (hi - lo)) ** rho
    levels[0], levels[-1] = noise_min, noise_max
    return levels
