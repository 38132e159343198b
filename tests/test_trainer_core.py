"""The shared trainer core: the EMA updates point the right way, the state advances by keyword,
and a bad batch is refused before it reaches the optimiser."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctjax
from ctjax import training

from .helpers import gaussian_2d


def _params(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, model.trainable()))


def _ve_model(key):
    return ctjax.ConsistencyFunction(ctjax.MLP(2, width=8, depth=1, key=key), ctjax.VarianceExploding())


def _trigflow_model(key):
    net = ctjax.MLP(2, width=8, depth=1, embedding="sinusoidal", key=key)
    return ctjax.ConsistencyFunction(net, ctjax.TrigFlow(0.5), ctjax.TrigFlowScalings(0.5))


@pytest.mark.parametrize("method", ["ct", "sct"])
def test_ema_updates_move_the_averages_towards_the_new_parameters(method, getkey):
    r"""After one step, $\bar\theta_1 = r\bar\theta_0 + (1 - r)\theta_1$ for the evaluation EMA at
    rate $r$, and $\theta^-_1 = \mu\theta^-_0 + (1 - \mu)\theta_1$ for CT's EMA teacher at
    $\mu = \mu(0)$; the rates are far from 1/2, so the update applied the wrong way round fails."""
    rate = 0.9
    if method == "ct":
        trainer = training.ct(optax.sgd(0.5), 100, s0=2, s1=10, mu0=0.7, ema_rate=rate)
        model = _ve_model(getkey())
    else:
        trainer = training.sct(optax.sgd(0.5), warmup_steps=0, ema_rate=rate)
        model = _trigflow_model(getkey())
    state = trainer.init(model, key=getkey())
    # Start the averages away from the model, so that both terms of each update matter.
    shifted = jax.tree_util.tree_map(lambda p: p + 1.0, eqx.filter(model, model.trainable()))
    state = eqx.tree_at(lambda s: s.ema, state, eqx.combine(shifted, model))
    if state.teacher is not None:
        state = eqx.tree_at(lambda s: s.teacher, state, eqx.combine(shifted, model))
    batch = gaussian_2d().sample(getkey(), 64)
    new, metrics = eqx.filter_jit(trainer.step)(state, batch, key=getkey())
    assert int(new.step) == 1
    theta = _params(new.model)
    assert not all(np.array_equal(a, b) for a, b in zip(theta, _params(model)))  # the step moved the model
    r = float(np.float32(rate))  # the trainers hold EMA rates in float32
    for old, avg, p in zip(_params(state.ema), _params(new.ema), theta):
        np.testing.assert_allclose(avg, r * old + (1 - r) * p, rtol=1e-12, atol=1e-12)
    if method == "ct":
        mu = float(metrics["teacher_decay"])
        assert 0.2 < mu < 0.8  # mu(0) = 0.7^(2/2)
        for old, avg, p in zip(_params(state.teacher), _params(new.teacher), theta):
            np.testing.assert_allclose(avg, mu * old + (1 - mu) * p, rtol=1e-12, atol=1e-12)
    else:
        assert new.extra is not None and new.teacher is None
        # The adaptive weighting is optimised with the model: its output layer left zero.
        assert float(jnp.max(jnp.abs(new.extra.out.weight))) > 0


def test_train_state_advances_by_keyword():
    state = training.TrainState(
        model=1, opt_state=2, step=jnp.asarray(3, jnp.int32), key=jr.key(0), teacher=6, ema=7, extra=4
    )
    new = state.advanced(model=5)
    assert int(new.step) == 4 and new.model == 5 and new.opt_state == 2
    assert new.teacher == 6 and new.ema == 7 and new.extra == 4 and new.key is state.key
    with pytest.raises(TypeError):
        state.advanced(step=jnp.asarray(0))  # the step only moves on


def test_initial_state_optimises_the_extra_state_with_the_model(getkey):
    """sCT's adaptive weighting is trained by the same optimiser as the model; without an EMA the
    result is the model itself."""
    trainer = training.sct(optax.adam(1e-3), ema_rate=None)
    model = _trigflow_model(getkey())
    state = trainer.init(model, key=getkey())
    num_model = len(_params(model))
    num_extra = len(jax.tree_util.tree_leaves(eqx.filter(state.extra, eqx.is_inexact_array)))
    # Adam keeps two moments per optimised array.
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if eqx.is_inexact_array(x)]
    assert num_extra > 0 and len(moments) == 2 * (num_model + num_extra)
    assert state.ema is None and trainer.result(state) is state.model


@pytest.fixture(scope="module")
def ect_state():
    trainer = training.ect(optax.adam(1e-3), 100)
    return trainer, trainer.init(_ve_model(jr.key(0)), key=jr.key(1))


@pytest.mark.parametrize(
    "batch, error, match",
    [
        (np.zeros((0, 2)), ValueError, r"`batch` must be a non-empty \(B, 2\) array with B >= 1, got shape \(0, 2\)"),
        (np.zeros((4, 3)), ValueError, r"`batch` must be a non-empty \(B, 2\) array.*got shape \(4, 3\)"),
        (np.zeros(4), ValueError, r"got shape \(4,\)"),
        (np.zeros((4, 2), np.int32), TypeError, "`batch` must hold floating-point numbers, got dtype int32"),
    ],
)
def test_step_refuses_a_bad_batch(ect_state, batch, error, match):
    trainer, state = ect_state
    with pytest.raises(error, match=match):
        trainer.step(state, jnp.asarray(batch), key=jr.key(2))


def test_ect_loss_of_a_nan_batch_is_nan(ect_state):
    """The l2 norm's safe gradient at 0 must not turn a NaN residual into a loss of 0."""
    trainer, state = ect_state
    batch = jnp.full((8, 2), jnp.nan)
    _, metrics = eqx.filter_jit(trainer.step)(state, batch, key=jr.key(2))
    assert np.isnan(float(metrics["loss"]))
    assert np.isnan(float(ctjax.L2()(jnp.array([jnp.nan, 0.0]))))
    assert float(ctjax.L2()(jnp.zeros(2))) == 0.0
    assert np.array_equal(np.asarray(jax.grad(ctjax.L2())(jnp.zeros(2))), np.zeros(2))


def test_fit_warns_when_the_batch_is_larger_than_the_data(ect_state):
    trainer, state = ect_state
    data = np.random.default_rng(0).standard_normal((10, 2))
    with pytest.warns(UserWarning, match=r"`batch_size` \(16\) is larger than the data set \(10 points\)"):
        training.fit(trainer, state, data, num_steps=1, batch_size=16, progress=False)


class _CleanPoint(training.AbstractPairing):
    """The teacher's point is the data point itself (a pairing no method uses: it makes the
    staged loss at stage 2 the plain denoising loss, since f_1 is the identity)."""

    def earlier(self, schedule, x0, z, x_hi, t_lo, t_hi):
        return x0


def test_staged_trainer_builds_the_teacher_point_with_its_pairing(getkey):
    """With a pairing that hands the teacher the data point itself, stage 2's loss is the plain
    denoising loss (f_1 is the identity), not the coupled-noise loss of the default pairing."""
    schedule = ctjax.DiscreteVP.li_huang_wei(16, 2.0, 4.0)
    model = ctjax.StagedConsistencyModel.init(
        lambda k: ctjax.MLP(2, width=8, depth=1, key=k), schedule, scalings=ctjax.EDMScalings(1.0), key=getkey()
    )
    batch, key = gaussian_2d().sample(getkey(), 64), getkey()
    trainer = training.StagedConsistencyTraining(optax.sgd(0.0), "sequential", 10, pairing=_CleanPoint())
    loss = float(eqx.filter_jit(trainer.step)(trainer.init(model, key=getkey()), batch, key=key)[1]["loss"])
    # The same draw as the trainer's: stage k = 2 at t_2 against f_1(x) = x at t_1.
    k_noise, _ = jr.split(key)
    z = jr.normal(k_noise, batch.shape, batch.dtype)
    t2, t1 = model.times[1], model.times[0]
    f2 = jax.vmap(lambda x: model.stage(1, x))(schedule.interpolate(t2, batch, z))
    np.testing.assert_allclose(loss, np.mean(np.sum((f2 - batch) ** 2, -1)), rtol=1e-10)
    coupled = np.mean(np.sum((f2 - schedule.interpolate(t1, batch, z)) ** 2, -1))
    assert abs(loss - coupled) > 1e-6 * coupled
