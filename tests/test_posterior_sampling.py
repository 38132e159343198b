"""`sample_posterior` against the closed-form posterior moments (`posterior_mean`, `posterior_covariance`),
within Monte Carlo error estimated from the draws themselves."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import ctjax

from .helpers import empirical_2d, gaussian_2d, mixture_2d


NUM = 100_000
# (alpha, sigma): a noisy point, the VE case, a nearly clean point, and pure noise (the posterior is the prior).
NOISE_LEVELS = [(0.8, 0.6), (1.0, 0.3), (0.95, 0.05), (0.0, 1.0)]


def _targets():
    return {"gaussian": gaussian_2d(), "mixture": mixture_2d(), "empirical": empirical_2d()}


@eqx.filter_jit
def _draws_and_moments(target, key, x, alpha, sigma):
    draws = target.sample_posterior(key, x, alpha, sigma, NUM)
    return draws, target.posterior_mean(x, alpha, sigma), target.posterior_covariance(x, alpha, sigma)


@pytest.mark.parametrize("name", ["gaussian", "mixture", "empirical"])
def test_posterior_draws_have_the_posterior_moments(name, getkey):
    target = _targets()[name]
    for alpha, sigma in NOISE_LEVELS:
        x0 = target.sample(getkey(), 1)[0]
        x = alpha * x0 + sigma * jr.normal(getkey(), (2,), x0.dtype)
        coeffs = (jnp.asarray(alpha), jnp.asarray(sigma))
        draws, mean, cov = (np.asarray(v) for v in _draws_and_moments(target, getkey(), x, *coeffs))
        assert draws.shape == (NUM, 2) and draws.dtype == np.float64
        # Tolerances: 5 standard errors of the sample mean (exact, from the posterior covariance) and of each
        # entry of the sample covariance (from the draws, floored at its Gaussian value), plus the weight of two
        # single draws: a nearly degenerate posterior (an atom of probability 1e-8) has rare draws that a
        # standard error estimated from 1e5 draws cannot see.
        centred = draws - mean[None, :]
        products = centred[:, :, None] * centred[:, None, :]
        se_mean = np.sqrt(np.diag(cov) / NUM)
        se_cov = np.maximum(
            products.std(axis=0) / np.sqrt(NUM), np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / NUM)
        )
        if name == "empirical":  # exact: Var(c_i c_j) = sum_n w_n (c_ni c_nj)^2 - cov_ij^2 over the atoms
            w = np.asarray(target.posterior_weights(x, alpha, sigma))
            c = np.asarray(target.points) - mean[None, :]
            fourth = np.einsum("n,ni,nj->ij", w, c**2, c**2)
            se_cov = np.maximum(se_cov, np.sqrt(np.maximum(fourth - cov**2, 0.0) / NUM))
        tol_mean = 5 * se_mean + 2 * np.max(np.abs(centred), axis=0) / NUM + 1e-10
        tol_cov = 5 * se_cov + 2 * np.max(np.abs(products - cov[None]), axis=0) / NUM + 1e-10
        msg = f"{name} at alpha={alpha}, sigma={sigma}"
        np.testing.assert_array_less(np.abs(draws.mean(axis=0) - mean), tol_mean, err_msg=msg)
        np.testing.assert_array_less(np.abs(products.mean(axis=0) - cov), tol_cov, err_msg=msg)
        if sigma >= 0.5:  # ... and there the posterior is far from a point mass: the comparison is not vacuous
            assert np.trace(cov) > 1e-2, msg


@pytest.mark.parametrize("name", ["gaussian", "mixture", "empirical"])
def test_zero_noise_gives_the_point_itself(name, getkey):
    target = _targets()[name]
    x = jnp.array([0.3, -0.4])
    draws = np.asarray(target.sample_posterior(getkey(), x, 0.5, 0.0, 7))
    if name == "empirical":  # a Dirac mixture at zero noise: x / alpha, whether or not it is an atom
        np.testing.assert_allclose(draws, np.tile(np.asarray(x) / 0.5, (7, 1)), rtol=0, atol=0)
    else:
        np.testing.assert_allclose(draws, np.tile(np.asarray(x) / 0.5, (7, 1)), rtol=1e-12, atol=1e-12)


def test_mixture_components_are_drawn_by_their_responsibilities(getkey):
    """Far-apart components: each draw is close to one component's posterior mean, and the frequencies
    match the responsibilities."""
    target = ctjax.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-3.0, 0.0], [3.0, 0.0]]), jnp.array([0.01, 0.01]))
    x, alpha, sigma = jnp.array([0.2, 0.1]), 1.0, 3.0
    draws = np.asarray(target.sample_posterior(getkey(), x, alpha, sigma, 20_000))
    resp = np.asarray(target.responsibilities(x, alpha, sigma))
    assert 0.05 < resp[0] < 0.95
    freq = np.mean(draws[:, 0] < 0)
    assert abs(freq - resp[0]) < 5 * np.sqrt(resp[0] * resp[1] / draws.shape[0])


def test_sampling_is_deterministic_vmappable_and_keeps_the_dtype(getkey):
    target = mixture_2d()
    key = getkey()
    xs = jnp.array([[0.1, 0.2], [1.0, -1.0], [-2.0, 0.5]])
    batched = jax.vmap(lambda k, x: target.sample_posterior(k, x, 0.7, 0.5, 4))(jr.split(key, 3), xs)
    assert batched.shape == (3, 4, 2)
    one = target.sample_posterior(jr.split(key, 3)[1], xs[1], 0.7, 0.5, 4)
    np.testing.assert_array_equal(np.asarray(batched[1]), np.asarray(one))
    assert not np.array_equal(np.asarray(one), np.asarray(target.sample_posterior(getkey(), xs[1], 0.7, 0.5, 4)))
    for t in (gaussian_2d(), mixture_2d(), empirical_2d()):
        out = t.sample_posterior(getkey(), jnp.array([0.1, 0.2], jnp.float32), 0.7, 0.5, 3)
        assert out.dtype == jnp.float32 and out.shape == (3, 2)
