"""Sliced W1 and the Gaussian W2 against POT, SciPy's 1-D W1 and matrix square root, and closed forms."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from ctjax.metrics import gaussian_w2, sliced_wasserstein1, wasserstein1

from .helpers import assert_close


_sliced = eqx.filter_jit(sliced_wasserstein1)


@pytest.mark.parametrize("m", [240, 170])
def test_sliced_w1_lower_bounds_exact_w1(getkey, m):
    """Every projected W1 is at most W1 (projections are 1-Lipschitz), so the estimate is too, for any draw."""
    x = jr.normal(getkey(), (240, 3))
    y = jr.normal(getkey(), (m, 3)) * jnp.array([[1.5, 0.5, 1.0]]) + jnp.array([[0.7, -0.2, 0.0]])
    exact = wasserstein1(x, y)
    for _ in range(3):
        sw = float(_sliced(x, y, num_projections=64, key=getkey()))
        assert 0.0 < sw <= exact + 1e-12, (sw, exact)


@pytest.mark.parametrize("n, m", [(300, 300), (300, 137), (50, 311)])
def test_sliced_w1_in_one_dimension_is_exact(getkey, n, m):
    """In d = 1 every direction is +-1, so the estimate is the exact W1 of the two empirical measures,
    also for unequal sizes (the merged-quantile integral)."""
    x = jr.normal(getkey(), (n, 1))
    y = 0.5 + 2.0 * jr.normal(getkey(), (m, 1))
    ref = scipy.stats.wasserstein_distance(np.asarray(x)[:, 0], np.asarray(y)[:, 0])
    assert_close(_sliced(x, y, num_projections=8, key=getkey()), ref, rtol=1e-12)
    assert_close(_sliced(x[:, 0], y[:, 0], num_projections=8, key=getkey()), ref, rtol=1e-12)  # vectors are d = 1
    assert_close(wasserstein1(x, y), ref, rtol=1e-9)


def test_sliced_w1_directions_are_uniform(getkey):
    """For a translation y = x + v each projected W1 is |theta . v|, and for theta uniform on the sphere in
    d = 3, E|theta_1| = 1/2: the estimate is ||v|| / 2 within Monte Carlo error (sd of |U|, U ~ U[0, 1], is
    1/sqrt(12))."""
    x = jr.normal(getkey(), (64, 3))
    v = jnp.array([0.6, -1.2, 0.4])
    P = 8192
    sw = float(_sliced(x, x + v[None, :], num_projections=P, key=getkey()))
    norm = float(jnp.linalg.norm(v))
    assert abs(sw - norm / 2) <= 5 * norm / np.sqrt(12 * P)


def test_sliced_w1_dtypes_and_errors(getkey):
    x32 = jr.normal(getkey(), (50, 2), dtype=jnp.float32)
    y64 = jr.normal(getkey(), (40, 2))
    out = _sliced(x32, x32, num_projections=4, key=getkey())
    assert out.dtype == jnp.float32 and float(out) == 0.0
    assert _sliced(x32, y64, num_projections=4, key=getkey()).dtype == jnp.float64
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein1(x32, jnp.ones((5, 3)), key=getkey())
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein1(x32, x32, num_projections=0, key=getkey())
    with pytest.raises(ValueError, match="point cloud"):
        sliced_wasserstein1(jnp.ones((2, 2, 2)), x32, key=getkey())


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.2 * np.eye(d)


def _bures_scipy(m1, c1, m2, c2):
    root = scipy.linalg.sqrtm(c1).real
    cross = scipy.linalg.sqrtm(root @ c2 @ root).real
    return np.sqrt(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * cross))


@pytest.mark.parametrize("seed", range(3))
def test_gaussian_w2_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    d = 4
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
    ref = _bures_scipy(m1, c1, m2, c2)
    host = gaussian_w2(m1, c1, m2, c2)
    assert isinstance(host, float)
    assert_close(host, ref, rtol=1e-10)
    assert_close(gaussian_w2(m2, c2, m1, c1), ref, rtol=1e-10)  # symmetric
    # The JAX path (any JAX argument), also under jit.
    args = tuple(jnp.asarray(v) for v in (m1, c1, m2, c2))
    assert_close(gaussian_w2(*args), ref, rtol=1e-10)
    assert_close(jax.jit(gaussian_w2)(*args), ref, rtol=1e-10)


def test_gaussian_w2_closed_forms():
    # 1-D: W2^2 = (m1 - m2)^2 + (s1 - s2)^2.
    assert_close(gaussian_w2([0.3], [[4.0]], [-1.0], [[0.25]]), np.hypot(1.3, 2.0 - 0.5), rtol=1e-14)
    # Commuting covariances: W2^2 = ||m1 - m2||^2 + sum (sqrt(l1) - sqrt(l2))^2 in the common eigenbasis.
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    l1, l2 = np.array([0.5, 2.0, 3.0]), np.array([1.0, 0.1, 3.0])
    ref = np.sqrt(1.0 + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2))
    got = gaussian_w2(np.zeros(3), q @ np.diag(l1) @ q.T, np.array([1.0, 0.0, 0.0]), q @ np.diag(l2) @ q.T)
    assert_close(got, ref, rtol=1e-12)
    # Identical laws: zero up to the cancellation of the trace terms (~ sqrt(eps tr S)).
    c = _random_spd(np.random.default_rng(1), 5)
    assert gaussian_w2(np.ones(5), c, np.ones(5), c) < 1e-6
    # A singular covariance (a point mass) is fine: W2(N(0, S), delta_0)^2 = tr S.
    assert_close(gaussian_w2(np.zeros(5), c, np.zeros(5), np.zeros((5, 5))), np.sqrt(np.trace(c)), rtol=1e-12)


def test_gaussian_w2_errors():
    with pytest.raises(ValueError, match="cov2"):
        gaussian_w2(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="mean2"):
        gaussian_w2(jnp.zeros(2), jnp.eye(2), jnp.zeros(3), jnp.eye(2))


@ft.partial(jax.jit, static_argnames="num_projections")
def _sliced_batch(xs, ys, keys, num_projections):
    return jax.vmap(lambda x, y, k: sliced_wasserstein1(x, y, num_projections=num_projections, key=k))(xs, ys, keys)


def test_sliced_w1_vmaps(getkey):
    xs = jr.normal(getkey(), (3, 40, 2))
    ys = jr.normal(getkey(), (3, 30, 2)) + 1.0
    keys = jr.split(getkey(), 3)
    batch = _sliced_batch(xs, ys, keys, 16)
    for i in range(3):
        assert_close(batch[i], _sliced(xs[i], ys[i], num_projections=16, key=keys[i]), rtol=1e-12)
