"""Checks of hyperparameters and targets hold for traced values too.

Each case builds an object from values that are concrete in one call (a `ValueError` at once) and
traced in another (under `eqx.filter_jit` or `jax.vmap`: an `eqx.error_if` when the program runs),
with the same message. The same compiled function with good values runs without error, so the run
time check is not one that always fires.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctjax
from ctjax import training


ADAM = optax.adam(1e-3)
MODEL = ctjax.ConsistencyFunction(ctjax.MLP(2, width=8, depth=1, key=jr.key(0)), ctjax.VarianceExploding())
EYE = np.eye(2)
NOT_PSD = np.array([[1.0, 2.0], [2.0, 1.0]])

# (builder, bad arguments, good arguments, message): the builder returns something that depends on
# the checked values, as a computation using the object would.
CASES = {
    "VarianceExploding": (
        lambda lo, hi: ctjax.VarianceExploding(lo, hi),
        (10.0, 1.0),
        (0.002, 80.0),
        "VarianceExploding needs 0 <= sigma_min < sigma_max < inf",
    ),
    "VariancePreserving": (
        lambda lo, hi: ctjax.VariancePreserving(lo, hi),
        (-1.0, 20.0),
        (0.1, 20.0),
        "VariancePreserving needs 0 <= beta_min <= beta_max",
    ),
    "TrigFlow": (lambda sd: ctjax.TrigFlow(sd), (0.0,), (0.5,), "`sigma_data` must be positive"),
    "DiscreteVP": (
        lambda lab: ctjax.DiscreteVP(lab),
        (np.array([-0.1, -0.05]),),
        (np.array([-0.1, -0.2]),),
        "`log_alpha_bar` must be finite, negative and strictly decreasing",
    ),
    "karras_noise_levels": (
        lambda lo, hi: ctjax.karras_noise_levels(lo, hi, 5),
        (2.0, 1.0),
        (0.1, 1.0),
        "Need 0 <= noise_min < noise_max < inf",
    ),
    "Gaussian covariance": (
        lambda cov: ctjax.Gaussian(np.zeros(2), cov),
        (NOT_PSD,),
        (EYE,),
        r"`cov` must be positive definite",
    ),
    "Gaussian mean": (
        lambda mean: ctjax.Gaussian(mean, EYE),
        (np.array([0.0, np.nan]),),
        (np.zeros(2),),
        "`mean` contains NaN or infinite values",
    ),
    "GaussianMixture covariance": (
        lambda covs: ctjax.GaussianMixture(np.array([0.5, 0.5]), np.zeros((2, 2)), covs),
        (np.stack([EYE, np.diag([1.0, -0.5])]),),
        (np.stack([EYE, EYE]),),
        r"`covs\[1\]` must be positive definite",
    ),
    "GaussianMixture weights": (
        lambda w: ctjax.GaussianMixture(w, np.zeros((2, 2)), np.stack([EYE, EYE])),
        (np.array([0.5, 0.6]),),
        (np.array([0.5, 0.5]),),
        "`weights` must sum to 1",
    ),
    "Empirical points": (
        lambda p: ctjax.Empirical(p),
        (np.array([[0.0, 1.0], [np.nan, 0.0]]),),
        (np.array([[0.0, 1.0], [2.0, 0.0]]),),
        "`points` contains NaN or infinite values",
    ),
    "EDMScalings": (lambda sd: ctjax.EDMScalings(sd), (-0.5,), (0.5,), "`sigma_data` must be positive"),
    "PseudoHuber": (lambda c: ctjax.PseudoHuber(c), (-0.1,), (0.0,), "PseudoHuber needs c >= 0"),
    "EMATeacher": (lambda mu: training.EMATeacher(mu), (1.0,), (0.95,), "EMATeacher needs 0 <= mu < 1"),
    "KarrasGrid": (
        lambda lo, hi: training.KarrasGrid(lo, hi),
        (1.0, 0.5),
        (0.002, 80.0),
        "KarrasGrid needs noise_min < noise_max",
    ),
    "FixedGrid": (
        lambda t: training.FixedGrid(t),
        (np.array([0.0, 0.0, 1.0]),),
        (np.array([0.0, 0.5, 1.0]),),
        "`times` must be strictly increasing",
    ),
    "ict ema_rate": (
        lambda r: training.ict(ADAM, 10, ema_rate=r),
        (1.5,),
        (0.999,),
        r"`ema_rate` must be in \[0, 1\) or None",
    ),
    "ECTTrainer q": (lambda q: training.ECTTrainer(ADAM, 10, q=q), (1.0,), (2.0,), "`q` must be > 1"),
    "sct normalisation_const": (
        lambda c: training.sct(ADAM, normalisation_const=c),
        (-0.1,),
        (0.1,),
        "`normalisation_const` must be positive",
    ),
    "DenoisingTrainer p_std": (
        lambda s: training.DenoisingTrainer(ADAM, p_std=s),
        (0.0,),
        (1.2,),
        "`p_std` must be positive",
    ),
    "AdaptiveEMATeacher": (
        lambda mu: training.AdaptiveEMATeacher(mu),
        (1.0,),
        (0.9,),
        "AdaptiveEMATeacher needs 0 < mu0 < 1",
    ),
    "DiscreteLogNormal": (lambda s: training.DiscreteLogNormal(0.0, s), (-1.0,), (2.0,), "`p_std` must be positive"),
    "TrigFlowScalings": (lambda sd: ctjax.TrigFlowScalings(sd), (0.0,), (0.5,), "`sigma_data` must be positive"),
    "LearnedVelocity": (
        lambda sd: training.LearnedVelocity(MODEL.net, sd),
        (-1.0,),
        (0.5,),
        "`sigma_data` must be positive",
    ),
    "ECTTrainer k and huber_c": (
        lambda k, c: training.ECTTrainer(ADAM, 10, k=k, huber_c=c),
        (-1.0, 0.0),
        (8.0, 0.0),
        "`k` must be non-negative",
    ),
    "TrigFlow sigma_data of schedule and scalings": (
        lambda sd: training.FlowMatchingTrainer(ADAM).init(
            ctjax.ConsistencyFunction(MODEL.net, ctjax.TrigFlow(0.5), ctjax.TrigFlowScalings(sd)), key=jr.key(0)
        ),
        (0.7,),
        (0.5,),
        "The TrigFlow schedule's sigma_data and TrigFlowScalings' sigma_data must be equal",
    ),
    "ConsistencyFunction time": (
        lambda t: MODEL(t, jnp.ones(2)),
        (100.0,),
        (1.0,),
        r"`t` must be a finite time in \[t_min, t_max\] of VarianceExploding = \[0.002, 80\]",
    ),
    "sample times": (
        lambda t: ctjax.sample(MODEL, 3, times=jnp.stack([t, jnp.asarray(1.0, jnp.result_type(t))]), key=jr.key(0)),
        (100.0,),
        (10.0,),
        r"`times` must lie in \(t_min, t_max\]",
    ),
    "theorem1_bound": (
        lambda lip: ctjax.theory.theorem1_bound(100, 2, lip),
        (-1.0,),
        (1.0,),
        "`lipschitz` must be finite and > 0",
    ),
}


def _leaves(out):
    return jax.block_until_ready(eqx.filter(out, eqx.is_array))


@pytest.mark.parametrize("name", list(CASES))
def test_concrete_and_traced_values_are_checked_alike(name):
    build, bad, good, message = CASES[name]
    with pytest.raises(ValueError, match=message):
        build(*bad)
    compiled = eqx.filter_jit(build)
    as_arrays = lambda args: tuple(jnp.asarray(a) for a in args)
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        _leaves(compiled(*as_arrays(bad)))
    _leaves(compiled(*as_arrays(good)))  # the same program with good values runs


@pytest.mark.parametrize(
    "name", ["VarianceExploding", "ict ema_rate", "ConsistencyFunction time", "Gaussian covariance"]
)
def test_one_bad_value_in_a_vmapped_batch_fails(name):
    build, bad, good, message = CASES[name]
    batch = tuple(jnp.stack([jnp.asarray(g), jnp.asarray(b)]) for g, b in zip(good, bad))
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        _leaves(eqx.filter_vmap(build)(*batch))
    both_good = tuple(jnp.stack([jnp.asarray(g), jnp.asarray(g)]) for g in good)
    _leaves(eqx.filter_vmap(build)(*both_good))


def test_flow_map_time_out_of_range_under_jit(caplog):
    """Under `eqx.filter_jit` the error is the message alone; under plain `jax.jit`, JAX wraps it
    in its callback error (jax-ml/jax#26102), which still names the argument, the range and the fix,
    while JAX's log of the same traceback is not printed again."""
    target = ctjax.Gaussian(jnp.zeros(2), jnp.eye(2))
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    fn = lambda t: ctjax.flow_map(target, schedule, jnp.ones(2), t, 0.1)
    message = r"`t_from` must be a finite time in \[t_min, t_max\] of VarianceExploding = \[0.002, 80\]; clip it"
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        jax.block_until_ready(eqx.filter_jit(fn)(jnp.asarray(100.0)))
    caplog.clear()
    with pytest.raises(Exception, match=message) as info:
        jax.block_until_ready(jax.jit(fn)(jnp.asarray(100.0)))
    assert isinstance(info.value, jax.errors.JaxRuntimeError)
    assert not [r for r in caplog.records if "pure_callback failed" in r.getMessage()]
    assert np.isfinite(np.asarray(jax.jit(fn)(jnp.asarray(50.0)))).all()


def test_concrete_hyperparameters_stay_python_numbers():
    """The converters return concrete values unchanged: Python floats stay Python floats, which
    `eqx.filter_jit` treats as constants (an array would be a new traced argument)."""
    trainer = training.ECTTrainer(ADAM, 10, q=3.0, huber_c=0.1)
    assert type(trainer.q) is float and type(trainer.huber_c) is float and type(trainer.ema_rate) is float
    assert type(training.sct(ADAM).normalisation_const) is float
    assert type(ctjax.VarianceExploding(0.002, 80.0).sigma_min) is float
    assert type(ctjax.TrigFlow(0.5).sigma_data) is float


def test_trainers_built_inside_a_vmap_over_a_hyperparameter_train():
    """A sweep over ECT's pseudo-Huber constant, c = 0 (the l2 norm) included, as one vmapped
    program: each loss equals the one of the trainer built with that constant concretely."""
    batch = jr.normal(jr.key(3), (16, 2))
    cs = jnp.asarray([0.0, 0.1])

    def loss(c):
        return training.ECTTrainer(ADAM, 10, huber_c=c).loss(MODEL, None, None, batch, jnp.asarray(0), jr.key(4))[0]

    swept = eqx.filter_jit(eqx.filter_vmap(loss))(cs)
    single = [float(eqx.filter_jit(lambda: loss(float(c)))()) for c in cs]
    np.testing.assert_allclose(np.asarray(swept), single, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(swept))) and single[0] != single[1]
