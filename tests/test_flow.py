"""The exact flow map against closed forms, the velocity field, SciPy quantile maps, and identities."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import ctjax

from .helpers import (
    all_schedules,
    assert_close,
    empirical_2d,
    flow_batch,
    gaussian_2d,
    gaussian_flow_batch,
    mixture_2d,
    schedule_ids,
    time_at_fraction,
)


XS = jnp.array([[0.3, 0.7], [-1.2, 0.4], [2.0, -1.0], [0.0, 0.0]])


def _time_pairs(schedule):
    """Both ends (where the noise level may be 0 or infinite), both directions, and interior pairs."""
    lo, hi = schedule.t_min, schedule.t_max
    mid, near = time_at_fraction(schedule, 0.4), time_at_fraction(schedule, 0.02)
    return [(hi, lo), (lo, hi), (mid, near), (near, mid), (hi, mid), (mid, lo)]


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_flow_matches_gaussian_closed_form(schedule):
    target = gaussian_2d()
    for t_from, t_to in _time_pairs(schedule):
        scale = float(jnp.hypot(schedule.alpha(t_from), schedule.sigma(t_from)))
        xs = XS * scale  # points on the scale of the marginal at t_from
        exact = gaussian_flow_batch(target, schedule, xs, t_from, t_to)
        solved = flow_batch(target, schedule, xs, t_from, t_to, rtol=1e-8, atol=1e-8)
        out_scale = max(1.0, float(jnp.hypot(schedule.alpha(t_to), schedule.sigma(t_to))))
        assert_close(solved, exact, atol=1e-7 * out_scale, err_msg=f"{t_from} -> {t_to}")


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_semigroup_and_inverse(schedule):
    target = mixture_2d()
    t, u, k = (time_at_fraction(schedule, f) for f in (0.6, 0.2, 0.03))
    xs = XS * float(jnp.hypot(schedule.alpha(t), schedule.sigma(t)))
    direct = flow_batch(target, schedule, xs, t, k)
    composed = flow_batch(target, schedule, flow_batch(target, schedule, xs, t, u), u, k)
    assert_close(composed, direct, atol=1e-7)
    back = flow_batch(target, schedule, flow_batch(target, schedule, xs, t, u), u, t)
    assert_close(back, xs, atol=1e-7)


def test_change_of_variables_for_a_mixture():
    """Marginal preservation, pointwise: log p_u(Phi(x)) = log p_t(x) - log |det dPhi/dx|."""
    target = mixture_2d()
    schedule = ctjax.VarianceExploding(0.002, 80.0)
    t, u = 3.0, 0.1

    @jax.jit
    def check(x):
        phi = ctjax.flow_map(target, schedule, x, t, u)
        jac = jax.jacfwd(lambda y: ctjax.flow_map(target, schedule, y, t, u))(x)
        lhs = target.marginal_log_prob(phi, 1.0, u)
        rhs = target.marginal_log_prob(x, 1.0, t) - jnp.linalg.slogdet(jac)[1]
        return lhs, rhs

    for x in XS * 2.0:
        lhs, rhs = check(x)
        assert_close(lhs, rhs, atol=1e-6)


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_gaussian_covariance_pushforward(schedule):
    """The flow's Jacobian M satisfies M C_t M^T = C_u (marginal preservation for Gaussians)."""
    target = gaussian_2d()
    t, u = time_at_fraction(schedule, 0.5), time_at_fraction(schedule, 0.05)
    jac = jax.jit(jax.jacfwd(lambda x: ctjax.flow_map(target, schedule, x, t, u)))(XS[0])
    c_t = schedule.alpha(t) ** 2 * target.cov + schedule.sigma(t) ** 2 * jnp.eye(2)
    c_u = schedule.alpha(u) ** 2 * target.cov + schedule.sigma(u) ** 2 * jnp.eye(2)
    assert_close(jac @ c_t @ jac.T, c_u, atol=1e-7)


def _own_time_flow(target, schedule, x, t0, t1):
    """Integrate dx/dt = velocity(t, x) in the schedule's own time: an independent route."""
    term = dfx.ODETerm(lambda t, y, args: ctjax.velocity(target, schedule, t, y))
    sol = dfx.diffeqsolve(
        term,
        dfx.Dopri8(),
        t0,
        t1,
        None,
        x,
        stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=16384,
    )
    return sol.ys[-1]


@pytest.mark.parametrize("schedule", all_schedules(), ids=schedule_ids())
def test_velocity_integrates_to_the_flow_map(schedule):
    target = mixture_2d()
    t0, t1 = time_at_fraction(schedule, 0.3), time_at_fraction(schedule, 0.05)
    if isinstance(schedule, ctjax.DiscreteVP):
        t0, t1 = float(round(t0)), float(round(t1))
    xs = XS * float(jnp.hypot(schedule.alpha(t0), schedule.sigma(t0)))
    own = jax.jit(jax.vmap(lambda x: _own_time_flow(target, schedule, x, t0, t1)))(xs)
    assert_close(own, flow_batch(target, schedule, xs, t0, t1), atol=2e-7)


def test_path_independence_across_schedules():
    """At matched noise levels every schedule gives the same map of x / sqrt(alpha^2 + sigma^2),
    each integrated in its own time; the two DiscreteVP interpolations agree at stages."""
    target = mixture_2d()
    lam_from, lam_to = 1.2, -1.5
    results = []
    for schedule in [ctjax.LinearInterpolant(), ctjax.VariancePreserving(), ctjax.TrigFlow(0.5)]:
        t0, t1 = schedule.time_at_log_noise(lam_from), schedule.time_at_log_noise(lam_to)
        r0 = jnp.hypot(schedule.alpha(t0), schedule.sigma(t0))
        r1 = jnp.hypot(schedule.alpha(t1), schedule.sigma(t1))
        own = jax.jit(jax.vmap(lambda x: _own_time_flow(target, schedule, x * r0, t0, t1)))(XS)
        results.append(own / r1)
    for other in results[1:]:
        assert_close(other, results[0], atol=2e-8)
    a = ctjax.DiscreteVP.li_huang_wei(64, 2.0, 4.0, interpolation="log_alpha_bar")
    b = ctjax.DiscreteVP.li_huang_wei(64, 2.0, 4.0, interpolation="log_snr")
    run = jax.jit(lambda s: jax.vmap(lambda x: _own_time_flow(target, s, x, 40.0, 3.0))(XS))
    assert_close(run(a), run(b), atol=2e-8)


def _mixture_cdf(weights, means, sds, x):
    return np.sum(weights * scipy.stats.norm.cdf((x - means) / sds))


def test_one_dimensional_flow_is_the_quantile_map():
    """In 1-D the flow is the monotone rearrangement F_u^{-1} o F_t, computed with SciPy."""
    weights, means, sds = np.array([0.3, 0.5, 0.2]), np.array([-2.0, 0.5, 3.0]), np.array([0.4, 0.8, 0.3])
    target = ctjax.GaussianMixture(weights, means[:, None], (sds**2)[:, None])
    schedule = ctjax.VariancePreserving()
    for t, u in [(0.8, 0.05), (0.2, 0.6), (1.0, 0.0)]:
        a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
        a_u, s_u = float(schedule.alpha(u)), float(schedule.sigma(u))
        sd_t, sd_u = np.sqrt(a_t**2 * sds**2 + s_t**2), np.sqrt(a_u**2 * sds**2 + s_u**2)
        for x in np.array([-1.5, -0.2, 0.4, 1.3]):
            p = _mixture_cdf(weights, a_t * means, sd_t, x)
            ref = scipy.optimize.brentq(lambda y: _mixture_cdf(weights, a_u * means, sd_u, y) - p, -20, 20, xtol=1e-14)
            got = flow_batch(target, schedule, jnp.array([[x]]), t, u)[0, 0]
            assert_close(got, ref, atol=1e-7, err_msg=f"t={t}, u={u}, x={x}")


def test_empirical_flow_lands_on_the_data():
    """From pure noise (linear interpolant, t = 1) to zero noise the flow ends on an atom."""
    target = empirical_2d()
    schedule = ctjax.LinearInterpolant()
    noise = jr.normal(jr.key(3), (16, 2))
    ends = flow_batch(target, schedule, noise, 1.0, 0.0)
    dist = jnp.min(jnp.linalg.norm(ends[:, None, :] - target.points[None], axis=-1), axis=1)
    assert float(jnp.max(dist)) < 1e-8
    # ... and different atoms are reached, not a single collapse.
    nearest = jnp.argmin(jnp.linalg.norm(ends[:, None, :] - target.points[None], axis=-1), axis=1)
    assert len(np.unique(np.asarray(nearest))) >= 3


def test_velocity_closed_forms():
    target = mixture_2d()
    x = XS[0]
    t = 0.7
    ve = ctjax.VarianceExploding()
    d = target.posterior_mean(x, 1.0, t)
    assert_close(ctjax.velocity(target, ve, t, x), (x - d) / t, rtol=1e-12)
    vp = ctjax.VariancePreserving(0.1, 20.0)
    beta = 0.1 + t * (20.0 - 0.1)
    sc = ctjax.score(target, vp, t, x)
    assert_close(ctjax.velocity(target, vp, t, x), -0.5 * beta * (x + sc), rtol=1e-10)
    lin = ctjax.LinearInterpolant()
    d = target.posterior_mean(x, 1 - t, t)
    assert_close(ctjax.velocity(target, lin, t, x), (x - d) / t, rtol=1e-12)
    trig = ctjax.TrigFlow(0.5)
    a, s = np.cos(t), 0.5 * np.sin(t)
    d = target.posterior_mean(x, a, s)
    assert_close(ctjax.velocity(target, trig, t, x), -np.sin(t) * d + np.cos(t) * 0.5 * (x - a * d) / s, rtol=1e-12)
    # Denoiser and score through the public API: Tweedie.
    assert_close(ctjax.denoiser(target, vp, t, x), (x + vp.sigma(t) ** 2 * sc) / vp.alpha(t), rtol=1e-10)


def test_flow_map_jacobian_matches_closed_form():
    target = gaussian_2d()
    schedule = ctjax.TrigFlow()
    jac = jax.jit(jax.jacfwd(lambda x: ctjax.flow_map(target, schedule, x, 1.2, 0.1)))(XS[1])
    jac_rev = jax.jit(jax.jacrev(lambda x: ctjax.flow_map(target, schedule, x, 1.2, 0.1)))(XS[1])
    exact = jax.jacfwd(lambda x: ctjax.gaussian_flow_map(target, schedule, x, 1.2, 0.1))(XS[1])
    assert_close(jac, exact, atol=1e-7)
    assert_close(jac_rev, exact, atol=1e-7)


def test_jacobian_where_the_solution_is_trivial():
    """At the mean of a centred Gaussian the solution never moves; the step-size controller would
    take giant steps and leave the tangent unresolved (found by the thorough Hypothesis profile)."""
    target = ctjax.Gaussian(jnp.zeros(2), jnp.diag(jnp.array([1.0, 2.0])))
    schedule = ctjax.LinearInterpolant()
    for t, u in [(1.0, 0.0), (0.75, 0.125)]:
        jac = jax.jit(jax.jacfwd(lambda x: ctjax.flow_map(target, schedule, x, t, u)))(jnp.zeros(2))
        exact = jax.jacfwd(lambda x: ctjax.gaussian_flow_map(target, schedule, x, t, u))(jnp.zeros(2))
        assert_close(jac, exact, atol=1e-8)


def test_identity_when_times_coincide():
    target = mixture_2d()
    schedule = ctjax.VariancePreserving()
    assert_close(flow_batch(target, schedule, XS, 0.4, 0.4), XS, atol=1e-14)


def test_float32():
    target = ctjax.Gaussian(jnp.array([1.0, -0.5], jnp.float32), jnp.array([[2.0, 0.3], [0.3, 0.5]], jnp.float32))
    schedule = ctjax.LinearInterpolant()
    x = XS.astype(jnp.float32)
    got = flow_batch(target, schedule, x, jnp.float32(1.0), jnp.float32(0.0), rtol=1e-5, atol=1e-5)
    assert got.dtype == jnp.float32
    exact = gaussian_flow_batch(target, schedule, XS, 1.0, 0.0)
    assert_close(got, exact, atol=2e-4)


def test_bad_inputs():
    target, schedule = mixture_2d(), ctjax.VarianceExploding()
    with pytest.raises(ValueError, match="`t_from` must be a finite time in \\[t_min, t_max\\].*, got 100.0"):
        ctjax.flow_map(target, schedule, XS[0], 100.0, 1.0)
    with pytest.raises(ValueError, match="`t_to`"):
        ctjax.flow_map(target, schedule, XS[0], 1.0, 0.0)
    with pytest.raises(ValueError, match="`t` must be a finite time in"):
        ctjax.denoiser(target, schedule, -1.0, XS[0])
    with pytest.raises(ValueError, match="shape \\(2,\\).*jax.vmap"):
        ctjax.flow_map(target, schedule, XS, 1.0, 0.5)
    with pytest.raises(ValueError, match="`x` must be one point of shape \\(2,\\)"):
        ctjax.score(target, schedule, 1.0, jnp.zeros(3))
    with pytest.raises(ValueError, match="scalar time"):
        ctjax.velocity(target, schedule, jnp.ones(2), XS[0])
    with pytest.raises(ValueError, match="finite"):
        ctjax.velocity(target, schedule, jnp.nan, XS[0])
    with pytest.raises(TypeError, match="Gaussian target"):
        ctjax.gaussian_flow_map(target, schedule, XS[0], 1.0, 0.5)
    with pytest.raises(TypeError, match="`target` must be a ctjax target"):
        ctjax.flow_map(schedule, schedule, XS[0], 1.0, 0.5)
    # Inside jit the time is only known at run time: a clear runtime error, not a NaN.
    traced = eqx.filter_jit(lambda t: ctjax.flow_map(target, schedule, XS[0], t, 1.0))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`t_from` must be a finite time in \\[t_min, t_max\\]"):
        traced(jnp.asarray(100.0))
