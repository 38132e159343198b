"""The reference-batch velocity estimate converges to the exact one on a Gaussian mixture.

For a pool of P points drawn from the target, the self-normalised posterior mean is a
self-normalised importance-sampling estimate of E[x0 | x_t] with weights p_t(x_t | x0); by its
central limit theorem its error is, with overwhelming probability, below five times its standard
error sqrt(sum_j w_j^2 |x0_j - m|^2) (normalised weights). The estimate is checked against an
independent NumPy computation of the same weights, and that against the exact posterior mean.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from hypothesis import given, strategies as st

from ctjax.training import ReferenceBatch

from .strategies import mixtures, schedules, vectors


POOL, QUERIES = 16384, 8


@jax.jit
def _estimate(schedule, pool, t, x):
    estimate = ReferenceBatch(None, data=pool, reference="none", chunk_size=4096)
    return estimate.posterior_mean(schedule, t, x, x, key=jr.key(0))


def _numpy_snis(pool, x, a, s):
    logits = -np.sum((x[:, None, :] - a[:, None, None] * pool[None]) ** 2, axis=-1) / (2 * s[:, None] ** 2)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    mean = w @ pool
    se = np.sqrt(np.sum(w**2 * np.sum((pool[None] - mean[:, None, :]) ** 2, axis=-1), axis=1))
    return mean, se, 1.0 / np.sum(w**2, axis=1)


@given(
    target=mixtures(),
    schedule=schedules(),
    noise_level=st.floats(0.3, 5.0),
    z=vectors(bound=2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_reference_batch_converges_to_the_exact_posterior_mean(target, schedule, noise_level, z, seed):
    k_pool, k_x0 = jr.split(jr.key(seed))
    pool = target.sample(k_pool, POOL)
    t = jnp.full((QUERIES,), schedule.time_at_noise(noise_level))
    a, s = jax.vmap(schedule.alpha)(t), jax.vmap(schedule.sigma)(t)
    # Typical points of the marginal p_t, and one at the given offset z.
    x0 = target.sample(k_x0, QUERIES)
    noise = jr.normal(jr.fold_in(k_x0, 1), x0.shape).at[0].set(jnp.asarray(z))
    x = a[:, None] * x0 + s[:, None] * noise
    got = np.asarray(_estimate(schedule, pool, t, x))
    mean, se, ess = _numpy_snis(np.asarray(pool), np.asarray(x), np.asarray(a), np.asarray(s))
    np.testing.assert_allclose(got, mean, rtol=1e-9, atol=1e-10)
    exact = np.asarray(jax.vmap(target.posterior_mean)(x, a, s))
    error = np.linalg.norm(got - exact, axis=-1)
    # The CLT bound needs enough effective samples to be a bound; a pool of 16384 gives them here.
    ok = ess >= 50
    assert ok.sum() >= QUERIES // 2, ess
    assert np.all(error[ok] <= 5 * se[ok] + 1e-8), (error, se, ess)
    # And the estimate is a good one: a few per cent of the data scale.
    assert np.median(error) < 0.1 * float(jnp.sqrt(jnp.trace(target.covariance()))), error
