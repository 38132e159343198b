"""Targets against SciPy densities, NumPy posteriors, Monte Carlo, and the Tweedie identities."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.special
import scipy.stats

import ctjax

from .helpers import assert_close, empirical_2d, gaussian_2d, mixture_2d


ALPHA_SIGMA = [(1.0, 0.3), (0.8, 0.6), (0.05, 1.0), (0.0, 1.0), (1.0, 2.5)]
POINTS = np.array([[0.3, 0.7], [-1.2, 0.4], [2.0, -1.0]])


def _numpy_mixture_log_prob(target, x, a, s):
    w = np.exp(np.asarray(target.log_weights))
    dens = [
        wk * scipy.stats.multivariate_normal(a * np.asarray(m), a**2 * np.asarray(c) + s**2 * np.eye(len(x))).pdf(x)
        for wk, m, c in zip(w, target.means, target.covs)
    ]
    return np.log(np.sum(dens))


def _numpy_mixture_posterior_mean(target, x, a, s):
    """theory.md 7.2 with explicit matrix inverses (no eigendecomposition)."""
    w = np.exp(np.asarray(target.log_weights))
    d = len(x)
    logs, comp = [], []
    for wk, m, c in zip(w, np.asarray(target.means), np.asarray(target.covs)):
        C = a**2 * c + s**2 * np.eye(d)
        logs.append(np.log(wk) + scipy.stats.multivariate_normal(a * m, C).logpdf(x))
        comp.append(m + a * c @ np.linalg.solve(C, x - a * m))
    resp = scipy.special.softmax(np.array(logs))
    return resp @ np.array(comp)


@pytest.mark.parametrize("a, s", ALPHA_SIGMA)
def test_gaussian_and_mixture_log_prob_match_scipy(a, s):
    g = gaussian_2d()
    m = mixture_2d()
    for x in POINTS:
        ref = scipy.stats.multivariate_normal(
            a * np.asarray(g.loc), a**2 * np.asarray(g.cov) + s**2 * np.eye(2)
        ).logpdf(x)
        assert_close(g.marginal_log_prob(jnp.asarray(x), a, s), ref, rtol=1e-12)
        assert_close(m.marginal_log_prob(jnp.asarray(x), a, s), _numpy_mixture_log_prob(m, x, a, s), rtol=1e-12)
        assert_close(
            m.posterior_mean(jnp.asarray(x), a, s), _numpy_mixture_posterior_mean(m, x, a, s), rtol=1e-10, atol=1e-12
        )


def test_data_log_prob_and_moments():
    g, m = gaussian_2d(), mixture_2d()
    x = jnp.asarray(POINTS[0])
    assert_close(
        g.log_prob(x),
        scipy.stats.multivariate_normal(np.asarray(g.loc), np.asarray(g.cov)).logpdf(POINTS[0]),
        rtol=1e-12,
    )
    assert_close(m.log_prob(x), _numpy_mixture_log_prob(m, POINTS[0], 1.0, 0.0), rtol=1e-12)
    w = np.asarray(m.weights)
    mu = w @ np.asarray(m.means)
    second = sum(
        wk * (np.asarray(c) + np.outer(mk, mk)) for wk, mk, c in zip(w, np.asarray(m.means), np.asarray(m.covs))
    )
    assert_close(m.mean(), mu, rtol=1e-12, atol=1e-15)
    assert_close(m.covariance(), second - np.outer(mu, mu), rtol=1e-12, atol=1e-14)
    e = empirical_2d()
    pts = np.asarray(e.points)
    assert_close(e.mean(), pts.mean(0), rtol=1e-12, atol=1e-15)
    assert_close(e.covariance(), np.cov(pts.T, bias=True), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("a, s", [(1.0, 0.3), (0.7, 0.7), (0.0, 1.0)])
def test_empirical_matches_numpy(a, s):
    e = empirical_2d()
    pts = np.asarray(e.points)
    for x in POINTS:
        logits = -np.sum((x - a * pts) ** 2, axis=1) / (2 * s**2)
        w = scipy.special.softmax(logits)
        assert_close(e.posterior_weights(jnp.asarray(x), a, s), w, rtol=1e-10, atol=1e-14)
        assert_close(e.posterior_mean(jnp.asarray(x), a, s), w @ pts, rtol=1e-10, atol=1e-12)
        ref = scipy.special.logsumexp(logits) - np.log(len(pts)) - np.log(2 * np.pi * s**2)
        assert_close(e.marginal_log_prob(jnp.asarray(x), a, s), ref, rtol=1e-12)
        c = pts - w @ pts
        assert_close(e.posterior_covariance(jnp.asarray(x), a, s), (w[:, None] * c).T @ c, rtol=1e-9, atol=1e-12)


TARGETS = [gaussian_2d, mixture_2d, empirical_2d]


@pytest.mark.parametrize("make", TARGETS, ids=["gaussian", "mixture", "empirical"])
@pytest.mark.parametrize("a, s", [(1.0, 0.3), (0.8, 0.6), (0.05, 1.0)])
def test_score_is_gradient_and_tweedie(make, a, s):
    target = make()
    for x in jnp.asarray(POINTS):
        grad = jax.grad(target.marginal_log_prob)(x, a, s)
        assert_close(target.marginal_score(x, a, s), grad, rtol=1e-10, atol=1e-12)
        # Tweedie: D = (x + s^2 score) / a.
        assert_close(target.posterior_mean(x, a, s), (x + s**2 * grad) / a, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("make", TARGETS, ids=["gaussian", "mixture", "empirical"])
@pytest.mark.parametrize("a, s", [(1.0, 0.3), (0.8, 0.6), (0.2, 1.0)])
def test_second_order_tweedie(make, a, s):
    """d D / d x = (a / s^2) Cov(x0 | x), symmetric positive semi-definite."""
    target = make()
    for x in jnp.asarray(POINTS):
        jac = jax.jacfwd(target.posterior_mean)(x, a, s)
        cov = target.posterior_covariance(x, a, s)
        assert_close(jac, a / s**2 * cov, rtol=1e-8, atol=1e-11)
        assert_close(jac, jac.T, atol=1e-11)
        assert np.linalg.eigvalsh(np.asarray(cov)).min() >= -1e-12


def test_posterior_mean_against_importance_sampling():
    """Self-normalised importance sampling with prior draws, independent of the closed form."""
    target = mixture_2d()
    x0 = np.asarray(target.sample(jr.key(0), 400_000))
    a, s = 0.9, 0.5
    for x in POINTS[:2]:
        logw = -np.sum((x - a * x0) ** 2, axis=1) / (2 * s**2)
        w = scipy.special.softmax(logw)
        ess = 1 / np.sum(w**2)
        est = w @ x0
        post_sd = np.sqrt(np.diag(np.asarray(target.posterior_covariance(jnp.asarray(x), a, s))))
        err = np.abs(np.asarray(target.posterior_mean(jnp.asarray(x), a, s)) - est)
        assert np.all(err < 6 * post_sd / np.sqrt(ess)), (err, post_sd / np.sqrt(ess))


@pytest.mark.parametrize("make", TARGETS, ids=["gaussian", "mixture", "empirical"])
def test_sample_moments(make):
    target = make()
    n = 200_000
    xs = np.asarray(target.sample(jr.key(1), n))
    assert xs.shape == (n, 2)
    cov = np.asarray(target.covariance())
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(xs.mean(0) - np.asarray(target.mean())) < 6 * se)
    assert_close(np.cov(xs.T), cov, rtol=0.03, atol=0.01)


def test_marginal_objects_agree():
    g, m = gaussian_2d(), mixture_2d()
    x = jnp.asarray(POINTS[1])
    assert_close(g.marginal(0.7, 0.4).log_prob(x), g.marginal_log_prob(x, 0.7, 0.4), rtol=1e-12)
    assert_close(m.marginal(0.7, 0.4).log_prob(x), m.marginal_log_prob(x, 0.7, 0.4), rtol=1e-12)


def test_far_away_points_are_stable():
    """log-sum-exp responsibilities: 60 standard deviations out nothing overflows."""
    m = mixture_2d()
    x = jnp.array([60.0, -45.0])
    d = m.posterior_mean(x, 1.0, 0.1)
    assert np.all(np.isfinite(np.asarray(d)))
    assert_close(d, _numpy_mixture_posterior_mean(m, np.asarray(x), 1.0, 0.1), rtol=1e-8)
    e = empirical_2d()
    assert np.all(np.isfinite(np.asarray(e.posterior_mean(x, 1.0, 1e-3))))


def test_empirical_zero_noise_and_density_errors():
    e = empirical_2d()
    x = e.points[2] * 0.5
    assert_close(e.posterior_mean(x, 0.5, 0.0), e.points[2], rtol=1e-15)
    with pytest.raises(ValueError, match="no density"):
        e.log_prob(e.points[0])
    with pytest.raises(ValueError, match="sigma > 0"):
        e.marginal_score(e.points[0], 1.0, 0.0)


def test_empirical_memory_is_linear_in_points():
    """A 10^4 x 10^3 data set: the compiled posterior needs no N x d temporary."""
    n, d = 10_000, 1_000
    target = ctjax.Empirical(jnp.zeros((n, d), dtype=jnp.float32))
    x = jnp.zeros((d,), jnp.float32)
    compiled = jax.jit(lambda tgt, y: tgt.posterior_mean(y, 1.0, 0.5)).lower(target, x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 0.05 * n * d * 4, temp


def test_precision_follows_the_query():
    g = gaussian_2d()  # float64 parameters
    x32 = jnp.asarray(POINTS[0], dtype=jnp.float32)
    assert g.posterior_mean(x32, 0.5, 0.5).dtype == jnp.float32
    assert mixture_2d().marginal_score(x32, 0.5, 0.5).dtype == jnp.float32
    assert empirical_2d().posterior_mean(x32, 0.5, 0.5).dtype == jnp.float32


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: ctjax.Gaussian(jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]])), ValueError, "positive definite"),
        (lambda: ctjax.Gaussian(jnp.zeros(2), jnp.array([[1.0, 0.5], [0.0, 1.0]])), ValueError, "symmetric"),
        (lambda: ctjax.Gaussian(jnp.zeros(2), jnp.eye(3)), ValueError, "shape \\(2, 2\\)"),
        (lambda: ctjax.Gaussian(jnp.zeros((2, 2)), jnp.eye(2)), ValueError, "`mean` must have shape"),
        (lambda: ctjax.Gaussian(jnp.array([0.0, jnp.nan]), jnp.eye(2)), ValueError, "NaN"),
        (lambda: ctjax.Gaussian(jnp.zeros(2), jnp.array([[1.0, 0.0], [0.0, jnp.inf]])), ValueError, "NaN or infinite"),
        (lambda: ctjax.Gaussian(jnp.zeros(2), "cov"), TypeError, "cov"),
        (lambda: ctjax.GaussianMixture(jnp.array([0.5, 0.6]), jnp.zeros((2, 2)), jnp.ones(2)), ValueError, "sum to 1"),
        (
            lambda: ctjax.GaussianMixture(jnp.array([1.5, -0.5]), jnp.zeros((2, 2)), jnp.ones(2)),
            ValueError,
            "non-negative",
        ),
        (lambda: ctjax.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((3, 2)), jnp.ones(3)), ValueError, "`means`"),
        (lambda: ctjax.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), jnp.ones(3)), ValueError, "`covs`"),
        (
            lambda: ctjax.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), jnp.array([1.0, -1.0])),
            ValueError,
            "covs\\[1\\].*positive definite",
        ),
        (lambda: ctjax.Empirical(jnp.zeros((0, 2))), ValueError, "non-empty"),
        (lambda: ctjax.Empirical(jnp.zeros(5)), ValueError, "\\(N, d\\)"),
        (lambda: ctjax.Empirical(jnp.array([[0.0, jnp.nan]])), ValueError, "NaN"),
        (lambda: ctjax.Empirical(jnp.zeros((3, 2)), jnp.array([0.5, 0.5])), ValueError, "`weights` must have shape"),
    ],
)
def test_bad_targets_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
