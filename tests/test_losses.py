"""Distances, weightings, curricula and teacher rates against their papers' formulas."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import ctjax
from ctjax.training import (
    AdaptiveEMATeacher,
    DiscreteLogNormal,
    DoublingCurriculum,
    KarrasGrid,
    lognormal_times,
    SqrtCurriculum,
)

from .helpers import assert_close


def _rotation(d, key):
    q, r = jnp.linalg.qr(jr.normal(key, (d, d)))
    return q * jnp.sign(jnp.diag(r))[None, :]


def test_pseudo_huber_is_on_the_norm(getkey):
    d = 16
    ph = ctjax.PseudoHuber()
    c = 0.00054 * math.sqrt(d)
    r = jr.normal(getkey(), (d,))
    # Rotation invariance (an elementwise Huber is not).
    q = _rotation(d, getkey())
    assert_close(ph(q @ r), ph(r), rtol=1e-12)
    # Large residuals: -> ||r||; small: -> ||r||^2 / (2c).
    big = 1e3 * r
    assert_close(ph(big), jnp.linalg.norm(big), rtol=1e-6)
    small = 1e-6 * r
    assert_close(ph(small), jnp.sum(small**2) / (2 * c), rtol=1e-5)
    assert_close(ph(r), np.sqrt(np.sum(np.asarray(r) ** 2) + c**2) - c, rtol=1e-12)
    assert float(ctjax.PseudoHuber(0.1)(jnp.zeros(d))) == 0.0
    with pytest.raises(ValueError, match="c >= 0"):
        ctjax.PseudoHuber(-1.0)


def test_the_mean_reduction_divides_the_squared_norm_by_the_dimension(getkey):
    d = 16
    r = np.asarray(jr.normal(getkey(), (d,)))
    sq = float(np.sum(r**2))
    assert_close(ctjax.SquaredL2("mean")(r), sq / d, rtol=1e-14)
    assert_close(ctjax.SquaredL2()(r), sq, rtol=1e-14)
    assert_close(ctjax.L2("mean")(r), np.sqrt(sq / d), rtol=1e-14)
    assert_close(ctjax.PseudoHuber(0.3, "mean")(r), np.sqrt(sq / d + 0.09) - 0.3, rtol=1e-14)
    assert_close(ctjax.PseudoHuber(0.3)(r), np.sqrt(sq + 0.09) - 0.3, rtol=1e-14)
    # The safe gradient at a zero residual holds for both reductions.
    assert np.all(np.isfinite(np.asarray(jax.grad(ctjax.L2("mean"))(jnp.zeros(d)))))
    with pytest.raises(ValueError, match="reduction"):
        ctjax.SquaredL2("max")


def test_l2_has_a_finite_gradient_at_zero():
    grad = jax.grad(ctjax.L2())(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert_close(ctjax.L2()(jnp.array([3.0, 4.0])), 5.0, rtol=1e-15)
    assert_close(ctjax.SquaredL2()(jnp.array([3.0, 4.0])), 25.0, rtol=1e-15)


def test_weightings():
    assert_close(ctjax.InverseDeltaWeighting()(jnp.array(0.5), jnp.array(0.75)), 4.0, rtol=1e-15)
    assert float(ctjax.UniformWeighting()(jnp.array(0.5), jnp.array(0.75))) == 1.0


def _openai_num_scales(step, total, s0, s1):
    """consistency_models_cifar10's create_ema_and_scales_fn, "adaptive" CT."""
    scales = np.ceil(np.sqrt((step / total) * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1).astype(np.int32)
    return np.maximum(scales, 1) + 1


def test_sqrt_curriculum_matches_reference_and_endpoints():
    cur = SqrtCurriculum(2, 150, 10_000)
    steps = np.arange(0, 10_001, 37)
    got = np.asarray(jax.vmap(cur.num_scales)(jnp.asarray(steps)))
    assert np.array_equal(got, _openai_num_scales(steps, 10_000, 2, 150))
    assert int(cur.num_scales(0)) == 2 and int(cur.num_scales(10_000)) == 151
    assert np.all(np.diff(got) >= 0)
    assert int(cur.num_scales(50_000)) == 151  # clamped past the end


def test_doubling_curriculum():
    cur = DoublingCurriculum(10, 1280, 400_000)
    steps = np.arange(0, 400_001, 1000)
    got = np.asarray(jax.vmap(cur.num_scales)(jnp.asarray(steps)))
    assert int(got[0]) == 11 and int(got[-1]) == 1281
    assert np.all(np.diff(got) >= 0)
    assert sorted(set(got.tolist())) == [11, 21, 41, 81, 161, 321, 641, 1281]
    k_prime = 400_000 // (math.log2(1280 // 10) + 1)
    ref = np.minimum(10 * 2 ** (steps // k_prime), 1280) + 1
    assert np.array_equal(got, ref)


def test_adaptive_ema_paper_and_code_conventions():
    paper = AdaptiveEMATeacher(0.9, 2, "paper")
    code = AdaptiveEMATeacher(0.9, 2, "code")
    assert_close(paper.decay(0, 2), 0.9, rtol=1e-6)
    assert_close(code.decay(0, 2), 0.81, rtol=1e-6)  # theory.md: the official code's mu(0)
    assert_close(paper.decay(0, 151), math.exp(2 * math.log(0.9) / 151), rtol=1e-6)


def test_karras_grid_at_traced_sizes():
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    grid = KarrasGrid()
    for n in [2, 11, 151]:
        idx = jnp.arange(n)
        times = grid.time(schedule, idx, jnp.asarray(n))
        assert_close(times, schedule.karras_grid(n), rtol=1e-12)
        assert float(times[0]) == 0.002 and float(times[-1]) == 80.0


def test_discrete_lognormal_probabilities():
    """p(i) proportional to erf differences (iCT), computed here with math.erf; padding masked."""
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    sampler = DiscreteLogNormal(-1.1, 2.0)
    n, n_max = 11, 21
    logp = np.asarray(sampler.log_probs(KarrasGrid(), schedule, jnp.asarray(n), n_max))
    sig = np.asarray(schedule.karras_grid(n))
    ref = np.array(
        [
            math.erf((math.log(sig[i + 1]) + 1.1) / (math.sqrt(2) * 2.0))
            - math.erf((math.log(sig[i]) + 1.1) / (math.sqrt(2) * 2.0))
            for i in range(n - 1)
        ]
    )
    p = np.exp(logp[: n - 1])
    assert_close(p / p.sum(), ref / ref.sum(), rtol=1e-10)
    assert np.all(np.isneginf(logp[n - 1 :]))
    draws = np.asarray(sampler.sample(jr.key(0), (50_000,), KarrasGrid(), schedule, jnp.asarray(n), n_max))
    assert draws.min() >= 0 and draws.max() <= n - 2
    freq = np.bincount(draws, minlength=n - 1) / draws.size
    assert np.max(np.abs(freq - ref / ref.sum())) < 0.01


@pytest.mark.parametrize(
    "schedule",
    [
        ctjax.VarianceExploding(0.002, 80.0),
        ctjax.TrigFlow(0.5),
        ctjax.VariancePreserving(0.1, 20.0, 1e-3, 1.0),
        ctjax.DiscreteVP.li_huang_wei(64, 2.0, 4.0),
    ],
    ids=["ve", "trigflow", "vp", "discrete_vp"],
)
def test_lognormal_times(schedule):
    """The noise level of each time is the log-normal draw made from the same key, clipped to the
    schedule's range (ECT and EDM: t = n on VE; sCM: t = arctan(n / sigma_d) on TrigFlow)."""
    key = jr.key(3)
    t = lognormal_times(key, (4000,), schedule, -0.4, 1.6, jnp.float64)
    assert t.shape == (4000,) and t.dtype == jnp.float64
    tau = np.asarray(-0.4 + 1.6 * jr.normal(key, (4000,), jnp.float64))
    lo, hi = (float(schedule.log_noise(schedule.t_min)), float(schedule.log_noise(schedule.t_max)))
    inside = (tau > lo + 1e-9) & (tau < hi - 1e-9)
    assert inside.mean() > 0.5  # the comparison covers most draws
    log_noise = np.asarray(jax.vmap(schedule.log_noise)(t))
    assert_close(log_noise[inside], tau[inside], rtol=1e-7, atol=1e-7)
    assert np.all((np.asarray(t) >= float(schedule.t_min)) & (np.asarray(t) <= float(schedule.t_max)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SqrtCurriculum(1, 150, 100), "s0"),
        (lambda: SqrtCurriculum(10, 5, 100), "s0 <= s1"),
        (lambda: DoublingCurriculum(10, 1280, 0), "total_steps"),
        (lambda: AdaptiveEMATeacher(1.5), "mu0"),
        (lambda: AdaptiveEMATeacher(0.9, 2, "other"), "convention"),
        (lambda: ctjax.training.EMATeacher(1.0), "mu"),
        (lambda: ctjax.training.ConstantCurriculum(1), "`num` must be an integer >= 2"),
        (lambda: DiscreteLogNormal(0.0, -1.0), "p_std"),
        (lambda: ctjax.training.FixedGrid(jnp.array([0.0, 0.0, 1.0])), "increasing"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
