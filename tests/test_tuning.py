"""PretrainThenTune against its definition: exactly pre-training, then a fresh tuning run from the
pre-trained result with its own step count; one compiled program across the switch; a run split
at any step (the switch included) ends where an unsplit one does."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctjax
from ctjax.training import DenoisingTrainer, ect, fit, PretrainThenTune

from .helpers import CountingNet, tree_allclose


VE = ctjax.VarianceExploding(0.002, 80.0)
GAUSS = ctjax.Gaussian(jnp.array([0.5, -0.3]), jnp.array([[0.6, 0.2], [0.2, 0.3]]))
PRE, TUNE = 3, 4


def _model(net=None):
    net = ctjax.MLP(2, width=16, depth=1, key=jr.key(0)) if net is None else net
    return ctjax.ConsistencyFunction(net, VE, ctjax.EDMScalings(0.5))


def _trainers():
    # Learning-rate schedules make the optimiser's restart at the switch visible in the parameters.
    pretrain = DenoisingTrainer(optax.adam(optax.linear_schedule(1e-2, 1e-3, PRE)), ema_rate=0.5)
    tune = ect(optax.adam(optax.linear_schedule(3e-3, 1e-4, TUNE)), TUNE, num_stages=2, ema_rate=0.7)
    return pretrain, tune


def _batches():
    keys = jr.split(jr.key(3), 2 * (PRE + TUNE))
    return [(GAUSS.sample(keys[2 * i], 32), keys[2 * i + 1]) for i in range(PRE + TUNE)]


def test_is_pretraining_then_a_fresh_tuning_run():
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, tune, PRE)
    batches = _batches()
    state = trainer.init(_model(), key=jr.key(1))
    history = []
    for batch, key in batches:
        state, metrics = trainer.step(state, batch, key=key)
        history.append(metrics)

    # By hand: pre-training, then ECT initialised from the pre-trained EMA, counting its own steps.
    ref = pretrain.init(_model(), key=jr.key(1))
    for batch, key in batches[:PRE]:
        ref, _ = pretrain.step(ref, batch, key=key)
    pretrained = pretrain.result(ref)
    ref = tune.init(pretrained, key=jr.key(1))
    tune_metrics = []
    for batch, key in batches[PRE:]:
        ref, metrics = tune.step(ref, batch, key=key)
        tune_metrics.append(metrics)

    assert int(state.step) == PRE + TUNE and int(ref.step) == TUNE
    # Equal up to rounding (the composite runs its phases inside `lax.cond`, compiled; the
    # reference runs eagerly): 1e-14 measured in float64. A wrong hand-over (the raw model for the
    # EMA, Adam's moments or learning-rate schedule carried over, ECT's stages not restarted)
    # changes the parameters by 1e-4 or more.
    assert bool(tree_allclose(eqx.tree_at(lambda s: s.step, state, ref.step), ref, rtol=1e-10, atol=1e-12))
    assert bool(tree_allclose(trainer.result(state), tune.result(ref), rtol=1e-10, atol=1e-12))
    assert [int(m["phase"]) for m in history] == [0] * PRE + [1] * TUNE
    # ECT's stages count from the switch: 2 stages of 2 tuning steps.
    assert [int(m["stage"]) for m in history] == [0] * PRE + [0, 0, 1, 1]
    for ours, theirs in zip(history[PRE:], tune_metrics):
        assert all(np.isclose(float(ours[k]), float(theirs[k]), rtol=1e-10, atol=1e-12) for k in theirs)
    # Metrics the pre-training phase does not have are zero there.
    assert all(float(m["mean_ratio"]) == 0.0 for m in history[:PRE])
    # The result before the switch is the pre-training EMA.
    partial = trainer.init(_model(), key=jr.key(1))
    for batch, key in batches[:2]:
        partial, _ = trainer.step(partial, batch, key=key)
    assert bool(eqx.tree_equal(trainer.result(partial), partial.ema))


def test_zero_pretraining_steps_is_tuning_alone():
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, tune, 0)
    state, ref = trainer.init(_model(), key=jr.key(1)), tune.init(_model(), key=jr.key(1))
    for batch, key in _batches()[:2]:
        state, metrics = trainer.step(state, batch, key=key)
        ref, _ = tune.step(ref, batch, key=key)
        assert int(metrics["phase"]) == 1
    assert bool(eqx.tree_equal(state, ref))


def test_one_program_across_the_switch_and_split_runs_end_alike():
    counter = []
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, tune, PRE)
    model = _model(CountingNet(ctjax.MLP(2, width=16, depth=1, key=jr.key(0)), counter))
    start = trainer.init(model, key=jr.key(1))
    whole, history = fit(trainer, start, GAUSS, num_steps=PRE + TUNE, batch_size=32, chunk_size=1, progress=False)
    traces = len(counter)
    state = start
    for num in (1, 2, 1, 3):  # stops before, exactly at and after the switch
        state, _ = fit(trainer, state, GAUSS, num_steps=num, batch_size=32, chunk_size=1, progress=False)
    assert len(counter) == traces
    assert bool(eqx.tree_equal(state, whole))
    assert history["phase"].tolist() == [0] * PRE + [1] * TUNE
    assert np.all(np.isfinite(history["loss"]))


def test_result_inside_jit_selects_the_phase():
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, tune, PRE)
    state = trainer.init(_model(), key=jr.key(1))
    for batch, key in _batches()[: PRE + 1]:
        state, _ = trainer.step(state, batch, key=key)
    jitted = eqx.filter_jit(trainer.result)
    assert bool(eqx.tree_equal(jitted(state), trainer.result(state)))
    before = eqx.tree_at(lambda s: s.step, state, jnp.asarray(1, state.step.dtype))
    assert bool(eqx.tree_equal(jitted(before), pretrain.result(before)))


def test_mismatched_states_and_bad_arguments_are_named():
    pretrain, tune = _trainers()
    no_ema = ect(optax.adam(1e-3), TUNE, ema_rate=None)
    with pytest.raises(ValueError, match="different structures.*`ema_rate`"):
        PretrainThenTune(pretrain, no_ema, PRE).init(_model(), key=jr.key(1))
    clipped = ect(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), TUNE)
    with pytest.raises(ValueError, match="build both optimisers alike"):
        PretrainThenTune(pretrain, clipped, PRE).init(_model(), key=jr.key(1))
    trig = ctjax.TrigFlow(0.5)
    trig_model = ctjax.ConsistencyFunction(
        ctjax.MLP(2, width=16, depth=1, embedding="sinusoidal", key=jr.key(0)), trig, ctjax.TrigFlowScalings(0.5)
    )
    flow_matching = ctjax.training.FlowMatchingTrainer(optax.adam(1e-3))
    with pytest.raises(ValueError, match="adaptive weighting"):
        PretrainThenTune(flow_matching, ctjax.training.sct(optax.adam(1e-3)), PRE).init(trig_model, key=jr.key(1))
    with pytest.raises(ValueError, match="`pretrain_steps` must be a non-negative integer, got -1"):
        PretrainThenTune(pretrain, tune, -1)
    with pytest.raises(TypeError, match="`tune` must be a ctjax trainer"):
        PretrainThenTune(pretrain, optax.adam(1e-3), PRE)  # pyright: ignore[reportArgumentType]
