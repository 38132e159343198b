"""Schedules against independent NumPy formulas, their inverses, derivatives and grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctjax

from .helpers import all_schedules, assert_close, schedule_ids, time_at_fraction


def _numpy_alpha_sigma(schedule, t):
    """Independent closed forms written from the definitions."""
    t = np.asarray(t, dtype=np.float64)
    if isinstance(schedule, ctjax.LinearInterpolant):
        return 1 - t, t
    if isinstance(schedule, ctjax.VarianceExploding):
        return np.ones_like(t), t
    if isinstance(schedule, ctjax.VariancePreserving):
        b0, b1 = schedule.beta_min, schedule.beta_max
        abar = np.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2))
        return np.sqrt(abar), np.sqrt(1 - abar)
    if isinstance(schedule, ctjax.TrigFlow):
        return np.cos(t), schedule.sigma_data * np.sin(t)
    raise TypeError(schedule)


def _li_huang_wei_betas(T, c0, c1):
    """Eq. (23) written as a plain loop."""
    betas = [T ** (-c0)]
    rate = c1 * np.log(T) / T
    for t in range(1, T):
        betas.append(rate * min(betas[0] * (1 + rate) ** t, 1.0))
    return np.array(betas)


@pytest.mark.parametrize(
    "schedule",
    [s for s in all_schedules() if not isinstance(s, ctjax.DiscreteVP)],
    ids=["linear", "ve", "vp", "trigflow"],
)
def test_alpha_sigma_match_definitions(schedule):
    ts = np.linspace(float(schedule.t_min), float(schedule.t_max), 17)[1:-1]
    a_ref, s_ref = _numpy_alpha_sigma(schedule, ts)
    assert_close(jax.vmap(schedule.alpha)(jnp.asarray(ts)), a_ref, rtol=1e-13, atol=1e-15)
    assert_close(jax.vmap(schedule.sigma)(jnp.asarray(ts)), s_ref, rtol=1e-13, atol=1e-15)
    assert_close(jax.vmap(schedule.log_noise)(jnp.asarray(ts)), np.log(s_ref / a_ref), rtol=1e-12, atol=1e-12)


def test_discrete_vp_matches_eq_23():
    T, c0, c1 = 200, 2.0, 4.0
    schedule = ctjax.DiscreteVP.li_huang_wei(T, c0, c1)
    abar = np.cumprod(1 - _li_huang_wei_betas(T, c0, c1))
    stages = schedule.stage_times()
    assert_close(stages, np.arange(1, T + 1))
    assert_close(jax.vmap(schedule.alpha)(stages), np.sqrt(abar), rtol=1e-12)
    assert_close(jax.vmap(schedule.sigma)(stages), np.sqrt(1 - abar), rtol=1e-9)
    # sigma_1 = sqrt(beta_1) = 1/T: computed without cancellation.
    assert_close(schedule.sigma(1.0), np.sqrt(-np.expm1(np.log1p(-(T**-c0)))), rtol=1e-12)


@pytest.mark.parametrize("T", [100, 1000, 10000])
def test_li_huang_wei_schedule_properties(T):
    c0, c1 = 2.0, 4.0
    betas = _li_huang_wei_betas(T, c0, c1)
    abar = np.exp(np.asarray(ctjax.DiscreteVP.li_huang_wei(T, c0, c1).log_alpha_bar))
    rate = c1 * np.log(T) / T
    assert np.all(1 - betas >= 1 - rate) and 1 - rate >= 0.5  # (27a)
    assert np.all(betas[1:] / (1 - abar[:-1]) <= 4 * rate)  # (27b)
    growth = (1 - abar[1:]) / (1 - abar[:-1])
    assert np.all(growth >= 1) and np.all(growth <= 1 + 4 * rate)  # (27c)
    # theory.md: alpha_bar_T ~ e^{-1} T^{-(c1 - c0)}: 3.3e-5, 3.7e-7, 3.7e-9 at T = 1e2, 1e3, 1e4.
    expected = {100: 3.3e-5, 1000: 3.7e-7, 10000: 3.7e-9}[T]
    assert abs(abar[-1] / expected - 1) < 0.06


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_log_noise_inverse_round_trip(schedule):
    ts = jnp.asarray([time_at_fraction(schedule, f) for f in (0.013, 0.2, 0.5, 0.77, 0.97)])
    back = jax.vmap(schedule.time_at_log_noise)(jax.vmap(schedule.log_noise)(ts))
    assert_close(back, ts, rtol=1e-10, atol=1e-12)
    assert_close(
        jax.vmap(schedule.noise)(ts), jax.vmap(lambda t: schedule.sigma(t) / schedule.alpha(t))(ts), rtol=1e-12
    )


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_derivatives_match_finite_differences(schedule):
    h = 1e-6 * (schedule.t_max - schedule.t_min)
    for frac in (0.1, 0.37, 0.61, 0.9):
        t = time_at_fraction(schedule, frac)
        if isinstance(schedule, ctjax.DiscreteVP):
            t = np.floor(t) + 0.5  # the interpolation is piecewise smooth between stages
        a, s, da, ds = schedule.coefficients(jnp.asarray(t))
        fd_a = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
        fd_s = (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h)
        assert_close(da, fd_a, rtol=1e-6, atol=1e-9)
        assert_close(ds, fd_s, rtol=1e-6, atol=1e-9)


def test_degenerate_ends():
    lin = ctjax.LinearInterpolant()
    assert float(lin.log_noise(0.0)) == -np.inf and float(lin.log_noise(1.0)) == np.inf
    trig = ctjax.TrigFlow(0.5)
    assert float(trig.alpha(trig.t_max)) < 1e-16 and float(trig.sigma(trig.t_max)) == 0.5
    assert float(trig.alpha(jnp.float32(trig.t_max))) >= 0.0  # cos rounds negative in float32
    vp = ctjax.VariancePreserving()
    assert float(vp.sigma(0.0)) == 0.0 and float(vp.alpha(0.0)) == 1.0


def test_discrete_vp_interpolations_agree_on_grid_only():
    a = ctjax.DiscreteVP.li_huang_wei(50, 2.0, 4.0, interpolation="log_alpha_bar")
    b = ctjax.DiscreteVP.li_huang_wei(50, 2.0, 4.0, interpolation="log_snr")
    grid = a.stage_times()
    assert_close(jax.vmap(a.log_noise)(grid), jax.vmap(b.log_noise)(grid), rtol=1e-12, atol=1e-12)
    mid = grid[:-1] + 0.5
    gap = jnp.max(jnp.abs(jax.vmap(a.log_noise)(mid) - jax.vmap(b.log_noise)(mid)))
    assert gap > 1e-4


def test_karras_grid_matches_formula():
    n, rho, lo, hi = 18, 7.0, 0.002, 80.0
    i = np.arange(n)
    ref = (lo ** (1 / rho) + i / (n - 1) * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
    ve = ctjax.VarianceExploding(lo, hi)
    grid = ve.karras_grid(n, rho)
    assert_close(grid, ref, rtol=1e-12)
    assert float(grid[0]) == lo and float(grid[-1]) == hi
    vp = ctjax.VariancePreserving()
    times = vp.karras_grid(n, rho, noise_min=0.01, noise_max=50.0)
    ref_vp = (0.01 ** (1 / rho) + i / (n - 1) * (50.0 ** (1 / rho) - 0.01 ** (1 / rho))) ** rho
    assert_close(jax.vmap(vp.noise)(times), ref_vp, rtol=1e-9)


def test_uniform_grid():
    trig = ctjax.TrigFlow()
    assert_close(trig.uniform_grid(5), np.linspace(0, np.pi / 2, 5), rtol=1e-15)


def test_schedules_are_traced_under_jit():
    calls = []

    @jax.jit
    def f(schedule, t):
        calls.append(None)
        return schedule.alpha(t), schedule.sigma(t)

    for s0 in (0.002, 0.01, 0.5):
        a, s = f(ctjax.VarianceExploding(s0, 80.0), 1.0)
        assert float(s) == 1.0 and float(a) == 1.0
    assert len(calls) == 1  # parameters are leaves, not static: one compilation


def test_float32_stays_float32():
    for schedule in all_schedules():
        t = jnp.asarray(time_at_fraction(schedule, 0.5), dtype=jnp.float32)
        assert schedule.alpha(t).dtype == jnp.float32
        assert schedule.sigma(t).dtype == jnp.float32
        assert schedule.log_noise(t).dtype == jnp.float32


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ctjax.VarianceExploding(1.0, 0.5), "sigma_min < sigma_max"),
        (lambda: ctjax.VarianceExploding(-0.1, 80.0), "0 <= sigma_min"),
        (lambda: ctjax.VarianceExploding(0.002, float("inf")), "sigma_max < inf"),
        (lambda: ctjax.VariancePreserving(-1.0, 20.0), "beta_min"),
        (lambda: ctjax.VariancePreserving(0.0, 0.0), "beta_max > 0"),
        (lambda: ctjax.VariancePreserving(0.1, 20.0, 0.5, 0.2), "t_start < t_end"),
        (lambda: ctjax.TrigFlow(0.0), "`sigma_data` must be positive"),
        (lambda: ctjax.DiscreteVP.li_huang_wei(1), "at least 2"),
        (lambda: ctjax.DiscreteVP.li_huang_wei(8, 2.0, 4.0), "c1 log"),
        (lambda: ctjax.DiscreteVP.li_huang_wei(100, -1.0), "c0 > 0"),
        (lambda: ctjax.DiscreteVP(jnp.array([-0.1, -0.05])), "strictly decreasing"),
        (lambda: ctjax.DiscreteVP(jnp.array([-0.1, -0.2]), interpolation="cubic"), "interpolation"),
        (lambda: ctjax.DiscreteVP.from_betas(jnp.array([0.1, 1.5])), "in \\(0, 1\\)"),
        (lambda: ctjax.VarianceExploding().karras_grid(1), "at least 2"),
        (lambda: ctjax.LinearInterpolant().karras_grid(10), "noise_max"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
