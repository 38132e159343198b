"""Flow maps X(s, t, x) (issue 18): the parametrisation, the exact map, sampling, the (s, t) error
and semigroup metrics, and the MeanFlow and (self-)distillation trainers, against the exact flow."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctjax
from ctjax._flow_maps import velocity_scalings
from ctjax.training import ExactVelocity, fit, FlowMapDistillationTrainer, meanflow, MeanFlowTrainer, ReferenceBatch

from .helpers import all_schedules, gaussian_2d, schedule_ids


LINEAR = ctjax.LinearInterpolant()


def flow_map(key, *, nonzero=True, schedule=LINEAR):
    model = ctjax.FlowMap(ctjax.TwoTimeMLP(2, width=32, depth=2, key=key), schedule, sigma_data=1.0)
    if nonzero:  # a fresh network's output layer is zero: the identity map
        out = model.net.out
        model = eqx.tree_at(lambda m: m.net.out.weight, model, 0.3 * jr.normal(jr.fold_in(key, 1), out.weight.shape))
    return model


def test_boundary_holds_exactly_and_a_fresh_map_is_the_identity(getkey):
    model = flow_map(getkey())
    x = jr.normal(getkey(), (2,))
    for s in (0.0, 0.3, 1.0):
        assert np.array_equal(np.asarray(model(s, s, x)), np.asarray(x))
    assert not np.allclose(model(0.9, 0.2, x), x)
    assert np.array_equal(np.asarray(flow_map(getkey(), nonzero=False)(0.9, 0.2, x)), np.asarray(x))
    slice_ = ctjax.ConsistencySlice(model)
    assert np.array_equal(np.asarray(slice_(0.0, x)), np.asarray(x))
    np.testing.assert_allclose(slice_(0.7, x), model(0.7, 0.0, x), rtol=0, atol=0)
    # X = x + (t - s) u, with u the network's average velocity.
    np.testing.assert_allclose(model(0.9, 0.2, x), x - 0.7 * model.average_velocity(0.9, 0.2, x), atol=1e-15)


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_flow_map_on_every_schedule(schedule, getkey):
    """The parametrisation is schedule-agnostic: exact boundary, finite jumps over the whole range, and
    the MeanFlow loss with the exact teacher is finite and differentiable there."""
    model = flow_map(getkey(), schedule=schedule)
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    x = jr.normal(getkey(), (2,)) * float(schedule.sigma(hi))
    assert np.array_equal(np.asarray(model(hi, hi, x)), np.asarray(x))
    jump = model(hi, lo, x)
    assert np.all(np.isfinite(jump)) and not np.allclose(jump, x)
    trainer = MeanFlowTrainer(optax.adam(1e-3), ExactVelocity(gaussian_2d(), schedule), weighting_power=0.0)
    grads = eqx.filter_grad(lambda m: _loss(trainer, m, gaussian_2d().sample(getkey(), 16), getkey()))(model)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("schedule", [LINEAR, ctjax.VarianceExploding(0.002, 80.0)], ids=["linear", "ve"])
def test_exact_flow_map_of_a_gaussian(schedule, getkey):
    target = gaussian_2d()
    exact = ctjax.ExactFlowMap(target, schedule)
    x = jr.normal(getkey(), (2,))
    hi, lo = 0.8 * float(schedule.t_max), 0.3 * float(schedule.t_max)
    np.testing.assert_allclose(exact(hi, lo, x), ctjax.gaussian_flow_map(target, schedule, x, hi, lo), atol=1e-12)
    np.testing.assert_allclose(
        exact.average_velocity(hi, lo, x),
        (ctjax.gaussian_flow_map(target, schedule, x, hi, lo) - x) / (lo - hi),
        atol=1e-12,
    )
    np.testing.assert_allclose(exact.average_velocity(lo, lo, x), ctjax.velocity(target, schedule, lo, x), atol=1e-12)


def test_flow_map_sampling_is_a_deterministic_chain():
    """For the exact map every grid gives the same sample (no re-noising), and it is the data law."""
    target = gaussian_2d()
    exact = ctjax.ExactFlowMap(target, LINEAR)
    key = jr.key(3)
    one = ctjax.sample(exact, 4000, key=key)
    three = ctjax.sample(exact, 4000, times=jnp.array([1.0, 0.6, 0.25]), key=key)
    np.testing.assert_allclose(three, one, atol=1e-9)
    mean, cov = np.asarray(target.mean()), np.asarray(target.covariance())
    se = np.sqrt(np.diag(cov) / 4000)
    assert np.all(np.abs(np.asarray(one).mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(np.asarray(one).T), cov, rtol=0.1, atol=0.05)
    with pytest.raises(ValueError, match="decreasing"):
        ctjax.sample(exact, 4, times=jnp.array([0.3, 0.6]), key=key)


def _identity_error_closed_form(target, schedule, s, t):
    """E||X_s - Phi_{s->t}(X_s)||^2 for X_s ~ N(m_s, C_s): Phi is affine, x -> A x + b."""
    phi = lambda x: ctjax.gaussian_flow_map(target, schedule, x, s, t)
    A = np.asarray(jax.jacfwd(phi)(jnp.zeros(2)))
    b = np.asarray(phi(jnp.zeros(2)))
    a, sig = float(schedule.alpha(s)), float(schedule.sigma(s))
    m = a * np.asarray(target.mean())
    C = a**2 * np.asarray(target.covariance()) + sig**2 * np.eye(2)
    M = np.eye(2) - A
    return np.sqrt(np.trace(M @ C @ M.T) + np.sum((M @ m - b) ** 2))


def test_flow_map_error_and_semigroup_defect(getkey):
    target = gaussian_2d()
    times = jnp.array([1.0, 0.5, 0.0])
    exact = ctjax.ExactFlowMap(target, LINEAR)
    err = ctjax.metrics.flow_map_error(exact, target, times, num_points=200, key=getkey())
    assert np.isnan(err[np.tril_indices(3)]).all()
    assert np.nanmax(err) < 1e-5
    assert np.nanmax(ctjax.metrics.semigroup_defect(exact, target, times, num_points=200, key=getkey())) < 1e-5
    # The identity map's error is |X_s - Phi(X_s)| in mean square: a closed form for a Gaussian.
    identity = flow_map(getkey(), nonzero=False)
    err = ctjax.metrics.flow_map_error(identity, target, times, num_points=4000, key=getkey())
    for i, j in ((0, 1), (0, 2), (1, 2)):
        want = _identity_error_closed_form(target, LINEAR, float(times[i]), float(times[j]))
        np.testing.assert_allclose(err[i, j], want, rtol=0.06)
    # The slice's column agrees with map_error of the consistency slice.
    np.testing.assert_allclose(
        ctjax.metrics.map_error(identity, target, times[:2], num_points=4000, key=getkey()), err[:2, 2], rtol=0.06
    )
    defect = ctjax.metrics.semigroup_defect(flow_map(getkey()), target, times, num_points=200, key=getkey())
    assert np.isnan(defect[1, 2]) and defect[0, 2] > 1e-3


def _losses(model, key):
    batch = gaussian_2d().sample(key, 64)
    teacher = ExactVelocity(gaussian_2d(), LINEAR)
    trainers = [
        MeanFlowTrainer(optax.adam(1e-3), teacher, weighting_power=0.0),
        FlowMapDistillationTrainer(optax.adam(1e-3), "lagrangian", teacher),
        FlowMapDistillationTrainer(optax.adam(1e-3), "eulerian", teacher),
    ]
    return [float(_loss(tr, model, batch, jr.fold_in(key, 1))) for tr in trainers]


@eqx.filter_jit
def _loss(trainer, model, batch, key):
    return trainer.loss(model, None, None, batch, jnp.int32(0), key)[0]


def test_losses_vanish_at_the_exact_flow_map(getkey):
    """With the exact teacher every flow-map loss is zero at the exact map, and not at another map."""
    exact = ctjax.ExactFlowMap(gaussian_2d(), LINEAR)
    assert max(_losses(exact, getkey())) < 1e-16
    assert min(_losses(flow_map(getkey()), getkey())) > 1e-2


@pytest.mark.parametrize(
    "make",
    [
        lambda: meanflow(
            optax.adam(3e-3),
            weighting_power=0.0,
            velocity_estimate=ReferenceBatch(512, data=gaussian_2d()),
            ema_rate=None,
        ),
        lambda: FlowMapDistillationTrainer(optax.adam(3e-3), "lagrangian", ema_rate=None),
        lambda: FlowMapDistillationTrainer(
            optax.adam(3e-3), "eulerian", ExactVelocity(gaussian_2d(), LINEAR), ema_rate=None
        ),
    ],
    ids=["meanflow", "lagrangian-self", "eulerian-teacher"],
)
def test_training_moves_the_map_towards_the_exact_flow(make):
    # Fixed keys: 400 steps of a no-teacher method are noisy, and the margin is for this run, not any run.
    target = gaussian_2d()
    trainer = make()
    model = flow_map(jr.key(10), nonzero=False)
    times = jnp.array([1.0, 0.0])
    before = ctjax.metrics.flow_map_error(model, target, times, num_points=500, key=jr.key(0))[0, 1]
    state, history = fit(
        trainer,
        trainer.init(model, key=jr.key(11)),
        target,
        num_steps=400,
        batch_size=128,
        chunk_size=400,
        progress=False,
    )
    assert np.all(np.isfinite(history["loss"]))
    after = ctjax.metrics.flow_map_error(trainer.result(state), target, times, num_points=500, key=jr.key(0))[0, 1]
    print(f"{before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)


def test_trigflow_velocity_scale_at_the_noise_end_in_float32():
    """float32 cos(pi/2) < 0 is clipped in alpha, but its derivative stays -sin t: the flow map's output
    scale at t_max is sigma_d, not 0 (which would make the 1-step jump the identity)."""
    schedule = ctjax.TrigFlow(0.7)
    t_max = jnp.float32(schedule.t_max)
    assert float(schedule.alpha(t_max)) == 0.0
    _, c_out = velocity_scalings(schedule, 0.7, t_max)
    np.testing.assert_allclose(c_out, 0.7, rtol=1e-6)
    _, _, d_alpha, _ = schedule.coefficients(t_max)
    np.testing.assert_allclose(d_alpha, -1.0, rtol=1e-6)


def test_bad_input_names_the_argument(getkey):
    with pytest.raises(TypeError, match="`net`"):
        ctjax.FlowMap(ctjax.MLP(2, key=getkey()), LINEAR)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`ratio`"):
        meanflow(optax.adam(1e-3), ratio=1.5)
    with pytest.raises(ValueError, match="`mode`"):
        FlowMapDistillationTrainer(optax.adam(1e-3), "sideways")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="teacher"):
        meanflow(optax.adam(1e-3), velocity=ExactVelocity(gaussian_2d(), LINEAR))
    cm = ctjax.ConsistencyFunction(ctjax.MLP(2, key=getkey()), LINEAR)
    with pytest.raises(TypeError, match="`model`"):
        meanflow(optax.adam(1e-3)).init(cm, key=getkey())  # pyright: ignore[reportArgumentType]
    other = ExactVelocity(gaussian_2d(), ctjax.TrigFlow(0.5))
    with pytest.raises(ValueError, match="same schedule"):
        MeanFlowTrainer(optax.adam(1e-3), other).init(flow_map(getkey()), key=getkey())
    with pytest.raises(ValueError, match="`c_t`"):
        ctjax.TwoTimeMLP(2, key=getkey())(jnp.zeros(2), 0.5, jnp.zeros(2))
    with pytest.raises(ValueError, match="`s`"):
        flow_map(getkey())(1.5, 0.0, jnp.zeros(2))
    with pytest.raises(ValueError, match="`weighting_eps`"):
        meanflow(optax.adam(1e-3), weighting_eps=0.0)
    with pytest.raises(ValueError, match="`time_scale`"):
        ctjax.FlowMap(ctjax.TwoTimeMLP(2, key=getkey()), LINEAR, time_scale=0.0)
    with pytest.raises(ValueError, match="`times`"):
        ctjax.metrics.flow_map_error(flow_map(getkey()), gaussian_2d(), jnp.array([1.5, 0.0]), key=getkey())
    with pytest.raises(ValueError, match="`target` has dimension 3"):
        target = ctjax.Gaussian(jnp.zeros(3), jnp.eye(3))
        ctjax.metrics.semigroup_defect(flow_map(getkey()), target, jnp.array([1.0, 0.5, 0.0]), key=getkey())
    # An integer time is a time, not a truncated t_min (the slice's end is the schedule's own t_min).
    ve = flow_map(getkey(), schedule=ctjax.VarianceExploding(0.002, 80.0))
    np.testing.assert_allclose(ctjax.ConsistencySlice(ve)(1, jnp.ones(2)), ve(1.0, 0.002, jnp.ones(2)), rtol=1e-12)
