"""ECT against exact statements: the t -> r mapping (against ECT's reference formula), stage 0 as
the denoising loss, shared dropout and a safe gradient at a zero residual, the loss's limit at the
exact consistency function as r -> t, compile counts across stages, and a measured improvement
of the map after tuning a denoising pre-trained model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import ctjax
from ctjax.training import DenoisingTrainer, diffusion_pretraining, ect, ECTTrainer, ExactVelocity, fit

from .helpers import assert_close, CountingNet


VE = ctjax.VarianceExploding(0.002, 80.0)
GAUSS = ctjax.Gaussian(jnp.array([0.5, -0.3]), jnp.array([[0.6, 0.2], [0.2, 0.3]]))


def _model(key, dropout=0.0, net=None):
    net = ctjax.MLP(2, width=16, depth=1, dropout=dropout, key=key) if net is None else net
    return ctjax.ConsistencyFunction(net, VE, ctjax.EDMScalings(0.5))


def _perturbed(model, key, scale=0.3):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jr.split(key, len(leaves))
    leaves = [leaf + scale * jr.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


def _reference_t_to_r(t, stage, q=2.0, k=8.0, b=1.0):
    """`locuslab/ect` training/loss.py, `t_to_r_sigmoid`, transcribed to NumPy."""
    adj = 1 + k / (1 + np.exp(b * t))  # 1 + k sigmoid(-b t)
    decay = 1 / q ** (stage + 1)
    return np.maximum(t * (1 - decay * adj), 0.0)


# ---------------------------------------------------------------------------------------------
# The mapping t -> r


def test_t_to_r_matches_ect_and_shrinks_the_gap_by_q_per_stage():
    trainer = ect(optax.sgd(0.0), 800, num_stages=8)
    assert trainer.steps_per_stage == 100
    t = np.geomspace(0.002, 80.0, 300)
    stages = np.arange(13)
    r = np.asarray(jax.jit(jax.vmap(trainer.t_to_r, in_axes=(None, 0)))(jnp.asarray(t), jnp.asarray(stages)))
    assert_close(r, _reference_t_to_r(t[None, :], stages[:, None]), rtol=1e-13, atol=1e-300)
    assert np.all(r >= 0) and np.all(r < t)
    assert np.all(np.diff(r, axis=0) >= 0)  # r -> t as the stage grows
    gap = (t - r) / t
    positive = r > 0
    # Where r > 0 the relative gap is exactly q^{-(s+1)} (1 + k sigmoid(-bt)) ...
    expected = 2.0 ** -(stages[:, None] + 1.0) * (1 + 8 / (1 + np.exp(t[None, :])))
    # (1 - r/t cancels digits where the gap is small: rtol 1e-10.)
    assert_close(gap[positive], np.broadcast_to(expected, gap.shape)[positive], rtol=1e-10)
    # ... so it halves from stage to stage.
    both = positive[1:] & positive[:-1]
    assert_close(gap[1:][both] / gap[:-1][both], 0.5, rtol=1e-10)
    assert np.max(gap[-1]) < 9 * 2.0**-13
    # Stage 0 (code's exponent s + 1): r = 0 exactly where 1 + 8 sigmoid(-t) >= 2, i.e. t <= log 7.
    assert np.all(r[0][t < np.log(7) - 1e-9] == 0) and np.all(r[0][t > np.log(7) + 1e-9] > 0)
    # The paper's exponent s (stage_offset=0): stage 0 is r = 0 for every t, and stage s is the code's s - 1.
    paper = ECTTrainer(optax.sgd(0.0), 100, stage_offset=0)
    r_paper = np.asarray(jax.vmap(paper.t_to_r, in_axes=(None, 0))(jnp.asarray(t), jnp.asarray(stages)))
    assert np.all(r_paper[0] == 0)
    assert_close(r_paper[1:], r[:-1], rtol=1e-14)


def test_stage_is_floor_of_step_over_steps_per_stage():
    trainer = ECTTrainer(optax.sgd(0.0), 25)
    steps = jnp.array([0, 1, 24, 25, 49, 50, 1000])
    assert np.array_equal(np.asarray(jax.vmap(trainer.stage)(steps)), [0, 0, 0, 1, 1, 2, 40])


# ---------------------------------------------------------------------------------------------
# The per-example loss


def test_stage_zero_is_the_denoising_loss(getkey):
    """With r = 0 (stage 0, paper's exponent) the target is the data: the loss is ||f(t, x0 + t eps) - x0||/t."""
    model = _perturbed(_model(getkey()), getkey())
    trainer = ECTTrainer(optax.sgd(0.0), 10, stage_offset=0)
    t = jnp.exp(jnp.linspace(-4.0, 4.0, 16))
    x0, eps = GAUSS.sample(getkey(), 16), jr.normal(getkey(), (16, 2))
    r = trainer.t_to_r(t, 0)
    assert np.all(np.asarray(r) == 0)
    losses, residuals = jax.jit(jax.vmap(lambda *a: trainer.pair_loss(model, *a)))(t, r, x0, eps)
    f_t = jax.vmap(model)(t, x0 + t[:, None] * eps)
    assert_close(residuals, f_t - x0, atol=1e-14)
    assert_close(losses, np.linalg.norm(np.asarray(f_t - x0), axis=-1) / np.asarray(t), rtol=1e-13)


def _pair_grad(trainer, model, t, r, x0, eps, key):
    return eqx.filter_grad(lambda m: trainer.pair_loss(m, t, r, x0, eps, key)[0])(model)


def test_shared_dropout_and_a_safe_gradient_at_zero_residual(getkey):
    model = _perturbed(_model(getkey(), dropout=0.5), getkey())
    trainer = ect(optax.sgd(0.0), 100)
    x0, eps, key = GAUSS.sample(getkey(), 1)[0], jr.normal(getkey(), (2,)), getkey()
    pair = eqx.filter_jit(trainer.pair_loss)
    # Same times: student and teacher see the same dropout mask, so the residual is exactly 0 ...
    _, residual = pair(model, 1.3, 1.3, x0, eps, key)
    assert np.array_equal(np.asarray(residual), np.zeros(2))
    # ... which it is not with two different masks (the test can fail).
    assert not np.allclose(np.asarray(model(1.3, x0 + 1.3 * eps, key=key)), np.asarray(model(1.3, x0 + 1.3 * eps)))
    _, residual = pair(model, 1.3, 1.2999, x0, eps, key)
    assert np.max(np.abs(np.asarray(residual))) > 0
    # c = 0 (the l2 norm) at a zero residual: t = t_min, r = 0, eps = 0 gives student = x0 = target,
    # with t - r > 0. The gradient is 0, not NaN (sqrt'(0) = inf times 0).
    grads = eqx.filter_jit(_pair_grad)(trainer, model, VE.t_min, 0.0, x0, jnp.zeros(2), key)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(np.all(np.asarray(g) == 0) for g in leaves)


@eqx.filter_jit
def _limits(trainer, exact, t, r, x0, eps, x_t):
    losses, residuals = jax.vmap(lambda r_, x_, e_: trainer.pair_loss(exact, t, r_, x_, e_))(r, x0, eps)
    # The continuous-time limit: d/dt f*(t, x0 + t eps) along the conditional path.
    tangent = jax.vmap(lambda x_, e_: jax.jvp(lambda s: exact(s, x_ + s * e_), (t,), (jnp.ones_like(t),))[1])(x0, eps)
    # E[residual | x_t] exactly: E[x_r | x_t] = x_t - (t - r) E[eps | x_t], and E[eps | x_t] is the VE velocity.
    velocity = jax.vmap(ExactVelocity(GAUSS, VE), in_axes=(None, 0))(t, x_t)
    mean_residual = jax.vmap(lambda r_, x_, v_: exact(t, x_) - exact(r_, x_ - (t - r_) * v_))(r, x_t, velocity)
    return jnp.mean(losses), jnp.mean(jnp.linalg.norm(residuals, axis=-1)), tangent, mean_residual


def test_loss_at_the_exact_consistency_function_as_r_tends_to_t():
    """At f = f* (closed form), as the stage grows (t - r halves per stage, t = 1):

    - the per-example residual ||f*(t, x_t) - f*(r, x_r)|| -> 0 at first order, but the ECT loss,
      that residual over (t - r), tends to E||d/dt f*(t, x0 + t eps)|| > 0 (observed order 1): the
      coupled-noise path is not the probability-flow path, so the loss does not vanish;
    - the residual's conditional mean E[residual | x_t]/(t - r) -> 0 at first order: in
      expectation the discrete target is consistent (what makes the squared-loss gradient at f* vanish).
    """
    trainer = ect(optax.sgd(0.0), 100)
    exact = ctjax.ExactConsistencyFunction(GAUSS, VE)
    t = jnp.asarray(1.0)
    num = 4096
    x0, eps = GAUSS.sample(jr.key(0), num), jr.normal(jr.key(1), (num, 2))
    x_t = x0 + t * eps
    stages = np.arange(2, 8)
    gaps, losses, norms, mean_residuals = [], [], [], []
    for s in stages:
        r = trainer.t_to_r(t, s)
        loss, norm, tangent, mean_residual = _limits(trainer, exact, t, jnp.full((num,), r), x0, eps, x_t)
        gaps.append(float(t - r))
        losses.append(float(loss))
        norms.append(float(norm))
        mean_residuals.append(float(jnp.sqrt(jnp.mean(jnp.sum(mean_residual**2, -1)))) / float(t - r))
    gaps, losses, norms, mean_residuals = map(np.asarray, (gaps, losses, norms, mean_residuals))
    limit = float(np.mean(np.linalg.norm(np.asarray(tangent), axis=-1)))
    assert limit > 0.3
    for values, target in [(losses, limit), (norms, 0.0), (mean_residuals, 0.0)]:
        errors = np.abs(values - target)
        slope = np.polyfit(np.log(gaps), np.log(errors), 1)[0]
        assert abs(slope - 1.0) < 0.15, (slope, values, target)
    assert abs(losses[-1] / limit - 1) < 0.02 and mean_residuals[-1] < 0.02 * limit


# ---------------------------------------------------------------------------------------------
# Validation and training


def test_validation():
    trig = ctjax.ConsistencyFunction(
        ctjax.MLP(2, width=8, depth=1, key=jr.key(0)), ctjax.TrigFlow(0.5), ctjax.TrigFlowScalings(0.5)
    )
    with pytest.raises(TypeError, match="variance-exploding"):
        ect(optax.sgd(0.0), 100).init(trig, key=jr.key(0))
    with pytest.raises(ValueError, match="q"):
        ECTTrainer(optax.sgd(0.0), 10, q=1.0)
    with pytest.raises(ValueError, match="steps_per_stage"):
        ECTTrainer(optax.sgd(0.0), 0)
    with pytest.raises(ValueError, match="huber_c"):
        ECTTrainer(optax.sgd(0.0), 10, huber_c=-1.0)
    assert isinstance(diffusion_pretraining(optax.sgd(0.0), VE), DenoisingTrainer)


def _map_errors(model):
    return ctjax.metrics.map_error(model, GAUSS, jnp.array([0.5, 2.0, 10.0]), num_points=2000, key=jr.key(5))


def test_ect_tuning_of_a_denoising_model_improves_the_map_without_recompiling():
    """EDM denoising pre-training (300 steps), then ECT from that model (400 steps, 4 stages of 100)
    on the 2-D Gaussian, width-16 MLP. The RMS error of f(t, .) against the exact flow at
    t = 0.5, 2, 10, measured with fixed seeds: untrained [0.464, 0.951, 1.109], denoiser
    [0.197, 0.612, 0.807] (at large t a denoiser outputs about the mean, not a sample), after ECT
    [0.051, 0.101, 0.119]. Asserted with a margin of about 2. Crossing stages does not retrace."""
    counter = []
    model = _model(jr.key(0), net=CountingNet(ctjax.MLP(2, width=16, depth=1, key=jr.key(0)), counter))
    untrained = _map_errors(model)
    pre = DenoisingTrainer(optax.adam(optax.cosine_decay_schedule(1e-2, 300, 0.01)), ema_rate=0.9)
    state = pre.init(model, key=jr.key(1))
    state, hist = fit(pre, state, GAUSS, num_steps=300, batch_size=256, chunk_size=300, progress=False)
    assert np.all(np.isfinite(hist["loss"]))
    pretrained = pre.result(state)
    denoiser = _map_errors(pretrained)

    trainer = ect(optax.adam(optax.cosine_decay_schedule(3e-3, 400, 0.01)), 400, num_stages=4, ema_rate=0.9)
    state = trainer.init(pretrained, key=jr.key(2))
    assert bool(eqx.tree_equal(state.model, pretrained))  # tuning starts from the pre-trained model
    counter.clear()
    state, hist = fit(trainer, state, GAUSS, num_steps=100, batch_size=256, chunk_size=100, progress=False)
    traces = len(counter)
    state, hist2 = fit(trainer, state, GAUSS, num_steps=300, batch_size=256, chunk_size=100, progress=False)
    assert len(counter) == traces
    stages = np.concatenate([hist["stage"], hist2["stage"]])
    assert np.array_equal(np.unique(stages), [0, 1, 2, 3]) and stages[99] == 0 and stages[100] == 1
    assert all(np.all(np.isfinite(v)) for h in (hist, hist2) for v in h.values())
    tuned = _map_errors(trainer.result(state))
    assert np.all(tuned < 0.2 * untrained) and np.all(tuned < 0.5 * denoiser), (untrained, denoiser, tuned)


def test_the_target_is_the_data_only_at_r_zero_and_the_boundary_below_t_min():
    """`locuslab/ect` uses x0 as the target only where r = 0; a teacher time 0 < r <= t_min is
    evaluated at t_min, where f(t_min, x) = x: the target is x0 + t_min eps, not x0."""
    trainer = ect(optax.sgd(0.0), 800)
    model = _perturbed(_model(jr.key(0)), jr.key(1))
    x0, eps, t = jnp.array([0.4, -0.2]), jnp.array([1.5, -0.7]), 0.05
    student = model(t, x0 + t * eps)
    pair = eqx.filter_jit(lambda r: trainer.pair_loss(model, t, r, x0, eps))
    for r, target in [(0.0, x0), (0.001, x0 + VE.t_min * eps), (VE.t_min, x0 + VE.t_min * eps)]:
        loss, residual = pair(jnp.asarray(r))
        np.testing.assert_allclose(np.asarray(residual), np.asarray(student - target), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(loss), float(jnp.linalg.norm(student - target)) / (t - r), rtol=1e-10)
    # Above t_min the teacher is the model itself at r.
    r = 0.02
    _, residual = pair(jnp.asarray(r))
    np.testing.assert_allclose(np.asarray(residual), np.asarray(student - model(r, x0 + r * eps)), rtol=1e-10)
    # The denoising fraction counts r = 0 only.
    batch = GAUSS.sample(jr.key(2), 64)
    aux = eqx.filter_jit(trainer.loss)(model, None, None, batch, jnp.asarray(0), jr.key(3))[1]
    t_all = ctjax.training.lognormal_times(
        jr.split(jr.key(3), 3)[0], (64,), VE, trainer.p_mean, trainer.p_std, batch.dtype
    )
    r_all = trainer.t_to_r(t_all, 0)
    assert float(aux["denoising_fraction"]) == pytest.approx(float(jnp.mean(r_all <= 0)))


def test_a_distance_replaces_the_pseudo_huber_norm():
    model = _perturbed(_model(jr.key(0)), jr.key(1))
    x0, eps = jnp.array([0.4, -0.2]), jnp.array([1.5, -0.7])
    sq = ect(optax.sgd(0.0), 800, distance=ctjax.SquaredL2())
    norm = ect(optax.sgd(0.0), 800)
    loss_sq, residual = sq.pair_loss(model, 0.5, 0.25, x0, eps)
    loss_norm, _ = norm.pair_loss(model, 0.5, 0.25, x0, eps)
    np.testing.assert_allclose(float(loss_sq), float(jnp.sum(residual**2)) / 0.25, rtol=1e-10)
    np.testing.assert_allclose(float(loss_norm), float(jnp.linalg.norm(residual)) / 0.25, rtol=1e-10)
    with pytest.raises(TypeError, match="distance"):
        ect(optax.sgd(0.0), 800, distance="l2")
