"""Hypothesis strategies for ctjax: random SPD covariances, targets, schedules and times.

Shapes are fixed (dimension 2, three mixture components, 64 discrete stages) so that every
example reuses the compiled program; only values vary.
"""

import math

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np

import ctjax


DIM = 2
NUM_COMPONENTS = 3
DISCRETE_STAGES = 64


@st.composite
def spd_matrices(draw, dim: int = DIM, min_eig: float = 0.05, max_eig: float = 4.0):
    """U diag(lam) U^T with eigenvalues in [min_eig, max_eig] and a random rotation."""
    eig = [draw(st.floats(min_eig, max_eig)) for _ in range(dim)]
    raw = np.array([[draw(st.floats(-1.0, 1.0)) for _ in range(dim)] for _ in range(dim)])
    q, r = np.linalg.qr(raw + 3.0 * np.eye(dim))  # shifted: always well conditioned
    q = q * np.sign(np.diag(r))
    return q @ np.diag(eig) @ q.T


def vectors(dim: int = DIM, bound: float = 2.0):
    return st.lists(st.floats(-bound, bound), min_size=dim, max_size=dim).map(np.array)


@st.composite
def gaussians(draw, dim: int = DIM):
    return ctjax.Gaussian(jnp.asarray(draw(vectors(dim))), jnp.asarray(draw(spd_matrices(dim))))


@st.composite
def mixtures(draw, dim: int = DIM, num: int = NUM_COMPONENTS):
    raw = np.array([draw(st.floats(0.2, 1.0)) for _ in range(num)])
    means = np.stack([draw(vectors(dim, 2.5)) for _ in range(num)])
    covs = np.stack([draw(spd_matrices(dim, 0.05, 1.0)) for _ in range(num)])
    return ctjax.GaussianMixture(jnp.asarray(raw / raw.sum()), jnp.asarray(means), jnp.asarray(covs))


@st.composite
def empiricals(draw, dim: int = DIM, num: int = 6):
    pts = np.stack([draw(vectors(dim, 2.0)) for _ in range(num)])
    return ctjax.Empirical(jnp.asarray(pts))


@st.composite
def schedules(draw):
    family = draw(st.sampled_from(["linear", "ve", "vp", "discrete_vp", "trigflow"]))
    if family == "linear":
        return ctjax.LinearInterpolant()
    if family == "ve":
        return ctjax.VarianceExploding(draw(st.floats(1e-3, 0.1)), draw(st.floats(5.0, 100.0)))
    if family == "vp":
        lo = draw(st.floats(0.05, 1.0))
        return ctjax.VariancePreserving(lo, draw(st.floats(5.0, 25.0)))
    if family == "discrete_vp":
        c0 = draw(st.floats(1.0, 3.0))
        c1 = c0 + draw(st.floats(2.0, 6.0))
        assert c1 * math.log(DISCRETE_STAGES) / DISCRETE_STAGES < 1
        return ctjax.DiscreteVP.li_huang_wei(DISCRETE_STAGES, c0, c1)
    return ctjax.TrigFlow(draw(st.floats(0.2, 2.0)))


def time_at(schedule, frac: float) -> float:
    return float(schedule.t_min) + frac * (float(schedule.t_max) - float(schedule.t_min))


fractions = st.floats(0.0, 1.0)
interior_fractions = st.floats(0.02, 0.98)
