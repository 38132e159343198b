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
from ctjax.training import AbstractTrainer, DenoisingTrainer, ect, fit, PretrainThenTune

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


class _ModelResult(AbstractTrainer):
    """A trainer whose result is the raw model rather than the EMA, so that the two phases'
    results differ and a test can tell which one `PretrainThenTune.result` returned."""

    inner: AbstractTrainer

    def init(self, model, *, key):
        return self.inner.init(model, key=key)

    def step(self, state, batch, *, key):
        return self.inner.step(state, batch, key=key)

    def result(self, state):
        return state.model


def test_is_pretraining_then_a_fresh_tuning_run():
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, tune, PRE)
    batches = _batches()
    step = eqx.filter_jit(trainer.step)
    state = trainer.init(_model(), key=jr.key(1))
    history = []
    for batch, key in batches:
        state, metrics = step(state, batch, key=key)
        history.append(metrics)

    # By hand: pre-training, then ECT initialised from the pre-trained EMA, counting its own steps
    # (each step compiled, as inside the composite).
    pretrain_step, tune_step = eqx.filter_jit(pretrain.step), eqx.filter_jit(tune.step)
    ref = pretrain.init(_model(), key=jr.key(1))
    for batch, key in batches[:PRE]:
        ref, _ = pretrain_step(ref, batch, key=key)
    ref = tune.init(pretrain.result(ref), key=jr.key(1))
    tune_metrics = []
    for batch, key in batches[PRE:]:
        ref, metrics = tune_step(ref, batch, key=key)
        tune_metrics.append(metrics)

    assert int(state.step) == PRE + TUNE and int(ref.step) == TUNE
    # Bit-identical with XLA's settings of this test suite; 1e-10 leaves room for other compilers
    # and platforms. A wrong hand-over (the raw model for the EMA, Adam's moments or learning-rate
    # schedule carried over, ECT's stages not restarted) changes the parameters by 1e-4 or more.
    assert bool(tree_allclose(eqx.tree_at(lambda s: s.step, state, ref.step), ref, rtol=1e-10, atol=1e-12))
    assert [int(m["phase"]) for m in history] == [0] * PRE + [1] * TUNE
    # ECT's stages count from the switch: 2 stages of 2 tuning steps.
    assert [int(m["stage"]) for m in history] == [0] * PRE + [0, 0, 1, 1]
    for ours, theirs in zip(history[PRE:], tune_metrics):
        assert all(np.isclose(float(ours[k]), float(theirs[k]), rtol=1e-10, atol=1e-12) for k in theirs)
    # Metrics the pre-training phase does not have are zero there.
    assert all(float(m["mean_ratio"]) == 0.0 for m in history[:PRE])


def test_result_is_the_current_phases():
    """`pretrain`'s result (the EMA) before the switch, `tune`'s (here the raw model) from the switch
    on, eagerly and under jit; at the switch, both the model and the EMA are the pre-trained EMA."""
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, _ModelResult(tune), PRE)
    step, result = eqx.filter_jit(trainer.step), eqx.filter_jit(trainer.result)
    states = [trainer.init(_model(), key=jr.key(1))]
    for batch, key in _batches():
        states.append(step(states[-1], batch, key=key)[0])
    for k, state in enumerate(states[1:], start=1):
        expected = state.ema if k < PRE else state.model
        for got in (trainer.result(state), result(state)):
            assert bool(eqx.tree_equal(got, expected)), k
        # The check can fail: away from the switch the two candidates differ.
        assert bool(eqx.tree_equal(state.ema, state.model)) == (k == PRE), k
    batch, key = _batches()[PRE - 1]
    pretrained, _ = eqx.filter_jit(pretrain.step)(states[PRE - 1], batch, key=key)
    assert bool(eqx.tree_equal(states[PRE].model, pretrained.ema))


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


def test_mismatched_states_and_bad_arguments_are_named():
    pretrain, tune = _trainers()
    no_ema = ect(optax.adam(optax.linear_schedule(1e-3, 1e-4, TUNE)), TUNE, ema_rate=None)
    with pytest.raises(ValueError, match="differ in `ema`, so one run.*`ema_rate`"):
        PretrainThenTune(pretrain, no_ema, PRE).init(_model(), key=jr.key(1))
    clipped = ect(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), TUNE)
    with pytest.raises(ValueError, match="differ in `opt_state`.*build both optimisers alike"):
        PretrainThenTune(pretrain, clipped, PRE).init(_model(), key=jr.key(1))
    trig = ctjax.TrigFlow(0.5)
    trig_model = ctjax.ConsistencyFunction(
        ctjax.MLP(2, width=16, depth=1, embedding="sinusoidal", key=jr.key(0)), trig, ctjax.TrigFlowScalings(0.5)
    )
    flow_matching = ctjax.training.FlowMatchingTrainer(optax.adam(1e-3))
    with pytest.raises(ValueError, match="adaptive weighting"):
        PretrainThenTune(flow_matching, ctjax.training.sct(optax.adam(1e-3)), PRE).init(trig_model, key=jr.key(1))
    with pytest.raises(ValueError, match=r"`pretrain_steps` must be an integer >= 0, got -1"):
        PretrainThenTune(pretrain, tune, -1)
    with pytest.raises(TypeError, match="`tune` must be a ctjax trainer"):
        PretrainThenTune(pretrain, optax.adam(1e-3), PRE)  # pyright: ignore[reportArgumentType]


def test_branches_must_keep_the_same_static_leaves():
    """The internal `lax.cond` keeps non-array leaves static, and refuses branches that disagree on
    them (rather than silently keeping one branch's)."""
    from ctjax.training._tuning import _cond

    tree = {"x": jnp.zeros(2), "scale": 0.5}
    out = _cond(jnp.asarray(True), lambda t: {**t, "x": t["x"] + 1}, lambda t: t, tree)
    assert out["scale"] == 0.5 and isinstance(out["scale"], float) and np.array_equal(out["x"], [1.0, 1.0])
    with pytest.raises(ValueError, match="different static parts"):
        _cond(jnp.asarray(True), lambda t: {**t, "scale": 0.25}, lambda t: t, tree)


def test_later_fit_calls_reuse_the_compiled_chunk():
    """A model's constants (the schedule's Python floats) come out of `fit` as they went in, before
    and after the switch, so the next call of the same shape does not recompile."""
    counter = []
    pretrain, tune = _trainers()
    trainer = PretrainThenTune(pretrain, tune, PRE)
    model = _model(CountingNet(ctjax.MLP(2, width=16, depth=1, key=jr.key(0)), counter))
    state = trainer.init(model, key=jr.key(1))
    traces = []
    for _ in range(3):  # steps 0-1 (pre-training), 2-3 (the switch at 3), 4-5 (tuning)
        state, _ = fit(trainer, state, GAUSS, num_steps=2, batch_size=32, chunk_size=2, progress=False)
        traces.append(len(counter))
        assert isinstance(state.model.schedule.sigma_min, float) and isinstance(state.ema.schedule.sigma_min, float)
    assert traces[0] > 0 and traces[1] == traces[0] and traces[2] == traces[0]
