"""Velocity estimates for training without a teacher, and the minibatch OT coupling."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import scipy.stats

import ctjax
from ctjax._flow import velocity as exact_velocity
from ctjax.training import (
    ect,
    Independent,
    MinibatchOT,
    ODEStep,
    optimal_assignment,
    ReferenceBatch,
    sct,
)


SCHEDULES = {
    "ve": ctjax.VarianceExploding(0.002, 80.0),
    "vp": ctjax.VariancePreserving(),
    "linear": ctjax.LinearInterpolant(),
    "trigflow": ctjax.TrigFlow(0.7),
    "discrete_vp": ctjax.DiscreteVP.li_huang_wei(64, 2.0, 4.0),
}


def _draw(schedule, num=32, dim=3, seed=0):
    k1, k2, k3 = jr.split(jr.key(seed), 3)
    x0 = jr.normal(k1, (num, dim))
    noise = jr.normal(k2, (num, dim))
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    # Interior times plus both ends of the range.
    t = jnp.concatenate([jnp.array([lo, hi]), jr.uniform(k3, (num - 2,), minval=lo, maxval=hi)])
    return t, schedule.interpolate(t[:, None], x0, noise), x0, noise


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_reference_set_of_one_point_is_one_sample_bitwise(name):
    schedule = SCHEDULES[name]
    t, x_t, x0, noise = _draw(schedule)
    x0_hat, noise_hat = jax.jit(lambda *a: ReferenceBatch(reference="self").estimate(schedule, *a, key=jr.key(1)))(
        t, x_t, x0, noise
    )
    assert np.array_equal(np.asarray(x0_hat), np.asarray(x0))
    assert np.array_equal(np.asarray(noise_hat), np.asarray(noise))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_fixed_pool_of_the_whole_data_set_gives_the_empirical_target_s_exact_velocity(name):
    schedule = SCHEDULES[name]
    points = jr.normal(jr.key(5), (300, 3)) * jnp.array([[1.0, 0.5, 2.0]])
    target = ctjax.Empirical(points)
    t, _, _, noise = _draw(schedule, num=32, seed=2)
    idx = jr.randint(jr.key(3), (32,), 0, 300)
    x0 = points[idx]
    x_t = schedule.interpolate(t[:, None], x0, noise)
    # 300 points in chunks of 128: a padded last chunk, merged by the streaming softmax.
    estimate = ReferenceBatch(None, data=points, reference="none", chunk_size=128)
    got = estimate.velocity(schedule, t, x_t, x0, noise, key=jr.key(0))
    interior = (t > schedule.t_min) & (t < schedule.t_max)
    want = jax.vmap(lambda s, x: exact_velocity(target, schedule, s, x))(t[interior], x_t[interior])
    np.testing.assert_allclose(np.asarray(got[interior]), np.asarray(want), rtol=1e-9, atol=1e-9)
    # The posterior mean itself (which also covers the ends): the target's, whatever the chunking.
    mean = estimate.posterior_mean(schedule, t, x_t, x0, key=jr.key(0))
    one_chunk = ReferenceBatch(None, data=points, reference="none").posterior_mean(schedule, t, x_t, x0, key=jr.key(0))
    a = jax.vmap(schedule.alpha)(t)
    s = jax.vmap(schedule.sigma)(t)
    exact = jax.vmap(target.posterior_mean)(x_t[interior], a[interior], s[interior])
    np.testing.assert_allclose(np.asarray(mean[interior]), np.asarray(exact), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(one_chunk), rtol=1e-10, atol=1e-12)


def test_the_batch_reference_is_the_posterior_mean_of_the_batch_as_an_empirical_target():
    schedule = SCHEDULES["vp"]
    t, x_t, x0, noise = _draw(schedule, num=64, seed=4)
    got = ReferenceBatch().posterior_mean(schedule, t, x_t, x0, key=jr.key(0))
    batch_target = ctjax.Empirical(x0)
    a, s = jax.vmap(schedule.alpha)(t), jax.vmap(schedule.sigma)(t)
    inner = slice(2, None)  # the two ends are sigma = 0 (x0 itself) and alpha = 0
    want = jax.vmap(batch_target.posterior_mean)(x_t[inner], a[inner], s[inner])
    np.testing.assert_allclose(np.asarray(got[inner]), np.asarray(want), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(x0[0]))  # sigma = 0: the point itself


def test_a_fresh_pool_from_a_mixture_approaches_its_exact_posterior_mean():
    target = ctjax.presets.gmm2d()
    schedule = SCHEDULES["ve"]
    x0 = target.sample(jr.key(0), 64)
    noise = jr.normal(jr.key(1), x0.shape)
    t = jnp.full((64,), 0.8)
    x_t = schedule.interpolate(t[:, None], x0, noise)
    exact = jax.vmap(lambda x: target.posterior_mean(x, 1.0, 0.8))(x_t)

    def error(pool):
        est = ReferenceBatch(pool, data=target, reference="self", chunk_size=2048)
        return float(
            jnp.mean(jnp.linalg.norm(est.posterior_mean(schedule, t, x_t, x0, key=jr.key(7)) - exact, axis=-1))
        )

    errors = [error(p) for p in (0, 512, 32768)]
    # Self-normalised importance sampling: the error shrinks like pool^(-1/2) (64x more points: ~8x less).
    assert errors[0] > 0.3 and errors[1] < errors[0] / 2 and errors[2] < errors[1] / 4, errors


def test_reference_batch_options_are_checked():
    with pytest.raises(ValueError, match="needs `data`"):
        ReferenceBatch(128)
    with pytest.raises(ValueError, match="fixed pool"):
        ReferenceBatch(None, data=ctjax.presets.gmm2d())
    with pytest.raises(ValueError, match='reference="none"'):
        ReferenceBatch(128, data=ctjax.presets.gmm2d(), reference="none")
    with pytest.raises(ValueError, match="`reference`"):
        ReferenceBatch(reference="all")
    with pytest.raises(ValueError, match="`pool_size`"):
        ReferenceBatch(-1)
    with pytest.raises(ValueError, match="`data`"):
        ReferenceBatch(16, data=np.zeros((0, 2)))
    cm = ctjax.ConsistencyFunction(ctjax.MLP(2, width=8, depth=1, key=jr.key(0)), SCHEDULES["ve"])
    velocity = ctjax.training.ExactVelocity(ctjax.presets.gmm2d(), SCHEDULES["ve"])
    with pytest.raises(ValueError, match="velocity_estimate"):
        ctjax.training.ConsistencyTrainer(
            optax.adam(1e-3),
            ctjax.training.ConstantCurriculum(10),
            pairing=ODEStep(velocity),
            velocity_estimate=ReferenceBatch(),
        )
    with pytest.raises(TypeError, match="velocity_estimate"):
        ctjax.training.ct(optax.adam(1e-3), 10, velocity_estimate="reference-batch")  # pyright: ignore
    with pytest.raises(TypeError, match="coupling"):
        ect(optax.adam(1e-3), 10, coupling="ot")
    with pytest.raises(ValueError, match="velocity_estimate"):
        ctjax.training.scd(optax.adam(1e-3), velocity, velocity_estimate=ReferenceBatch())
    del cm


# -- minibatch optimal transport ------------------------------------------------------------


def test_the_assignment_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    for _ in range(5):
        cost = rng.standard_normal((6, 6))
        perm = np.asarray(jax.jit(optimal_assignment)(jnp.asarray(cost)))
        best = min(itertools.permutations(range(6)), key=lambda p: sum(cost[i, p[i]] for i in range(6)))
        assert sorted(perm) == list(range(6))
        assert np.isclose(sum(cost[i, perm[i]] for i in range(6)), sum(cost[i, best[i]] for i in range(6)))
    # Under vmap: one assignment per matrix.
    costs = jnp.asarray(rng.standard_normal((3, 6, 6)))
    batched = np.asarray(jax.vmap(optimal_assignment)(costs))
    np.testing.assert_array_equal(batched, np.stack([np.asarray(optimal_assignment(c)) for c in costs]))


def test_minibatch_ot_reorders_the_noise_and_keeps_both_marginals():
    x0 = jr.normal(jr.key(0), (64, 2)) * 2.0 + 1.0
    noise = jr.normal(jr.key(1), (64, 2))
    paired = jax.jit(MinibatchOT().pair)(x0, noise)
    # A permutation of the rows: the noise batch is the same multiset, the data are untouched.
    order = lambda a: np.asarray(a)[np.lexsort(np.asarray(a).T)]
    np.testing.assert_array_equal(order(paired), order(noise))
    assert np.sum((x0 - paired) ** 2) < np.sum((x0 - noise) ** 2)
    assert Independent().pair(x0, noise) is noise
    # Over many batches the paired noise is still N(0, I) per coordinate, yet correlated with the data.
    keys = jr.split(jr.key(2), 100)
    data = jax.vmap(lambda k: jr.normal(k, (64, 2)) * 2.0 + 1.0)(keys)
    fresh = jax.vmap(lambda k: jr.normal(jr.fold_in(k, 1), (64, 2)))(keys)
    coupled = np.asarray(jax.vmap(MinibatchOT().pair)(data, fresh))
    for j in range(2):
        assert scipy.stats.kstest(coupled[:, :, j].ravel(), "norm").pvalue > 1e-3
    corr = np.corrcoef(np.asarray(data)[:, :, 0].ravel(), coupled[:, :, 0].ravel())[0, 1]
    assert corr > 0.5


# -- the trainers use them ------------------------------------------------------------------


def _cm(schedule, embedding="fourier", scalings=None):
    return ctjax.ConsistencyFunction(
        ctjax.MLP(2, width=16, depth=1, embedding=embedding, key=jr.key(0)), schedule, scalings
    )


def test_sct_with_a_reference_set_of_one_point_is_sct():
    trig = ctjax.TrigFlow(1.0)
    model = _cm(trig, "sinusoidal", ctjax.TrigFlowScalings(1.0))
    batch = ctjax.presets.gmm2d().sample(jr.key(0), 32)
    plain = sct(optax.adam(1e-3), warmup_steps=0)
    one = sct(optax.adam(1e-3), warmup_steps=0, velocity_estimate=ReferenceBatch(reference="self"))
    q0 = plain.tangents(model, batch, 0, jr.key(3))
    q1 = one.tangents(model, batch, 0, jr.key(3))
    np.testing.assert_array_equal(np.asarray(q0.g), np.asarray(q1.g))
    q2 = sct(optax.adam(1e-3), warmup_steps=0, velocity_estimate=ReferenceBatch()).tangents(model, batch, 0, jr.key(3))
    assert not np.allclose(np.asarray(q2.dx_dt), np.asarray(q0.dx_dt))
    np.testing.assert_array_equal(np.asarray(q2.x_t), np.asarray(q0.x_t))  # only the velocity changes


@pytest.mark.parametrize("method", ["ct", "ect"])
def test_the_estimate_and_the_coupling_change_the_discrete_losses(method):
    ve = SCHEDULES["ve"]
    model = _cm(ve, scalings=ctjax.EDMScalings(1.0))
    batch = ctjax.presets.gmm2d().sample(jr.key(0), 64)
    build = {
        "ct": lambda **kw: ctjax.training.ct(optax.adam(1e-3), 100, **kw),
        "ect": lambda **kw: ect(optax.adam(1e-3), 100, **kw),
    }[method]

    def loss(**kw):
        return float(eqx.filter_jit(build(**kw).loss)(model, None, None, batch, jnp.asarray(90), jr.key(4))[0])

    base = loss()
    # The estimate itself is bitwise one-sample (above); inside a larger fused program XLA may contract
    # a*b + c into an FMA in one program and not the other, hence the last-bit tolerance here.
    assert loss(velocity_estimate=ReferenceBatch(reference="self")) == pytest.approx(base, rel=1e-13)
    assert loss(velocity_estimate=ReferenceBatch()) != base
    assert loss(coupling=MinibatchOT()) != base
