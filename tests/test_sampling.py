"""Samplers and map_error against closed forms, using the exact consistency function."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import ctjax

from .helpers import assert_close


GAUSS = ctjax.Gaussian(jnp.array([0.5, -0.3]), jnp.array([[0.6, 0.2], [0.2, 0.3]]))


@pytest.mark.parametrize("times", [None, (1.0, 0.6, 0.2), (1.0, 0.9, 0.5, 0.3, 0.05)])
def test_exact_model_samples_the_data(times):
    """With the exact consistency function and the linear interpolant (pure noise at t = 1),
    one-step and multistep sampling reproduce the data law: the re-noising puts x back on the
    marginal at each time."""
    model = ctjax.ExactConsistencyFunction(GAUSS, ctjax.LinearInterpolant())
    n = 100_000
    xs = np.asarray(ctjax.sample(model, n, times=None if times is None else jnp.asarray(times), key=jr.key(0)))
    cov = np.asarray(GAUSS.cov)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(xs.mean(0) - np.asarray(GAUSS.loc)) < 6 * se)
    assert_close(np.cov(xs.T), cov, atol=6 * np.sqrt(2 / n) * np.max(cov))


def test_multistep_renoising_with_a_positive_sigma_min():
    """VE with sigma_min > 0: the output of every step is the marginal at sigma_min, Sigma + sigma_min^2 I."""
    schedule = ctjax.VarianceExploding(0.3, 80.0)
    model = ctjax.ExactConsistencyFunction(GAUSS, schedule)
    n = 100_000
    xs = np.asarray(ctjax.sample(model, n, times=jnp.array([80.0, 2.0, 0.7]), key=jr.key(1)))
    target_cov = np.asarray(GAUSS.cov) + 0.09 * np.eye(2)
    assert_close(np.cov(xs.T), target_cov, atol=6 * np.sqrt(2 / n) * np.max(target_cov))
    # sigma_max = 80 prior ignores the data term: its effect on the mean is below MC error here.
    assert np.all(np.abs(xs.mean(0) - np.asarray(GAUSS.loc)) < 0.02)


def test_sample_input_validation():
    model = ctjax.ExactConsistencyFunction(GAUSS, ctjax.LinearInterpolant())
    with pytest.raises(ValueError, match="strictly decreasing"):
        ctjax.sample(model, 4, times=jnp.array([0.5, 0.8]), key=jr.key(0))
    with pytest.raises(ValueError, match="lie in"):
        ctjax.sample(model, 4, times=jnp.array([1.5]), key=jr.key(0))
    with pytest.raises(ValueError, match="num"):
        ctjax.sample(model, 0, key=jr.key(0))


def test_map_error_against_closed_form():
    """For f = c_skip x (a zero network) the RMS error against the Gaussian flow is
    tr(B C_t B^T) + |B a mu - c|^2 with B = c_skip I - M, in closed form."""
    schedule = ctjax.VariancePreserving()
    net = ctjax.LinearNet(2, key=jr.key(0))  # zero-initialised: F = 0
    model = ctjax.ConsistencyFunction(net, schedule, ctjax.EDMScalings(0.5))
    times = jnp.array([0.1, 0.5, 0.9])
    got = ctjax.metrics.map_error(model, GAUSS, times, num_points=40_000, key=jr.key(2))
    mu, cov = np.asarray(GAUSS.loc), np.asarray(GAUSS.cov)
    for t, rms in zip(np.asarray(times), got):
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        c_skip = float(ctjax.EDMScalings(0.5)(schedule, jnp.asarray(t))[0])
        M = np.asarray(jax.jacfwd(lambda x: ctjax.gaussian_flow_map(GAUSS, schedule, x, t, 0.0))(jnp.zeros(2)))
        c = np.asarray(ctjax.gaussian_flow_map(GAUSS, schedule, jnp.zeros(2), t, 0.0))
        B = c_skip * np.eye(2) - M
        C_t = a**2 * cov + s**2 * np.eye(2)
        exact = np.sqrt(np.trace(B @ C_t @ B.T) + np.sum((B @ (a * mu) - c) ** 2))
        assert abs(rms / exact - 1) < 0.03, (t, rms, exact)
    exact_model = ctjax.ExactConsistencyFunction(GAUSS, schedule)
    assert np.max(ctjax.metrics.map_error(exact_model, GAUSS, times, num_points=500, key=jr.key(3))) < 1e-12
