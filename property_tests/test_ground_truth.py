"""Invariants of the exact ground truth (theory.md section 8, items 2-3)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st

import ctjax

from .strategies import empiricals, fractions, gaussians, interior_fractions, mixtures, schedules, time_at, vectors


any_target = st.one_of(gaussians(), mixtures(), empiricals())


@jax.jit
def _tweedie_terms(target, x, a, s):
    score = target.marginal_score(x, a, s)
    grad = jax.grad(target.marginal_log_prob)(x, a, s)
    den = target.posterior_mean(x, a, s)
    jac = jax.jacfwd(target.posterior_mean)(x, a, s)
    cov = target.posterior_covariance(x, a, s)
    return score, grad, den, jac, cov


@given(target=any_target, x=vectors(bound=3.0), a=st.floats(0.05, 1.0), s=st.floats(0.05, 2.0))
def test_tweedie_and_jacobian_identity(target, x, a, s):
    """score = grad log p_t; D = (x + s^2 score)/a; dD/dx = (a/s^2) Cov(x0|x), symmetric PSD."""
    score, grad, den, jac, cov = _tweedie_terms(target, jnp.asarray(x), a, s)
    scale = 1.0 + float(jnp.max(jnp.abs(grad)))
    np.testing.assert_allclose(score, grad, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(den, (x + s**2 * grad) / a, rtol=1e-8, atol=1e-8 * scale)
    np.testing.assert_allclose(jac, a / s**2 * cov, rtol=1e-7, atol=1e-9 * (1 + float(jnp.max(jnp.abs(jac)))))
    np.testing.assert_allclose(jac, jac.T, atol=1e-9 * (1 + float(jnp.max(jnp.abs(jac)))))
    assert np.linalg.eigvalsh(np.asarray(cov)).min() >= -1e-9 * (1 + float(jnp.max(jnp.abs(cov))))


@jax.jit
def _flow_and_exact(target, schedule, x, t_from, t_to):
    return ctjax.flow_map(target, schedule, x, t_from, t_to), ctjax.gaussian_flow_map(target, schedule, x, t_from, t_to)


ends_or_interior = st.one_of(st.sampled_from([0.0, 1.0]), fractions)


@given(target=gaussians(), schedule=schedules(), z=vectors(bound=2.5), f_from=ends_or_interior, f_to=ends_or_interior)
def test_flow_map_equals_gaussian_closed_form(target, schedule, z, f_from, f_to):
    """Diffrax agrees with the closed form to 1e-7 (relative to the scale at t_to), ends included."""
    t_from, t_to = time_at(schedule, f_from), time_at(schedule, f_to)
    x = jnp.asarray(z) * jnp.hypot(schedule.alpha(t_from), schedule.sigma(t_from))
    solved, exact = _flow_and_exact(target, schedule, x, t_from, t_to)
    scale = max(1.0, float(jnp.hypot(schedule.alpha(t_to), schedule.sigma(t_to))))
    np.testing.assert_allclose(solved, exact, atol=1e-7 * scale)


@jax.jit
def _semigroup(target, schedule, x, t, u, k):
    direct = ctjax.flow_map(target, schedule, x, t, k)
    mid = ctjax.flow_map(target, schedule, x, t, u)
    return direct, ctjax.flow_map(target, schedule, mid, u, k), ctjax.flow_map(target, schedule, mid, u, t)


@given(
    target=mixtures(),
    schedule=schedules(),
    z=vectors(bound=2.0),
    fracs=st.lists(interior_fractions, min_size=3, max_size=3),
)
def test_semigroup_and_inverse(target, schedule, z, fracs):
    """Phi_{u->k} o Phi_{t->u} = Phi_{t->k} and Phi_{u->t} o Phi_{t->u} = id."""
    t, u, k = (time_at(schedule, f) for f in sorted(fracs, reverse=True))
    x = jnp.asarray(z) * jnp.hypot(schedule.alpha(t), schedule.sigma(t))
    direct, composed, back = _semigroup(target, schedule, x, t, u, k)
    scale = max(1.0, float(jnp.max(jnp.abs(x))))
    np.testing.assert_allclose(composed, direct, atol=2e-7 * scale)
    np.testing.assert_allclose(back, x, atol=2e-7 * scale)


@jax.jit
def _pushforward(target, schedule, x, t, u):
    jac = jax.jacfwd(lambda y: ctjax.flow_map(target, schedule, y, t, u))(x)
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    c_t = schedule.alpha(t) ** 2 * target.cov + schedule.sigma(t) ** 2 * eye
    c_u = schedule.alpha(u) ** 2 * target.cov + schedule.sigma(u) ** 2 * eye
    return jac @ c_t @ jac.T, c_u


@given(target=gaussians(), schedule=schedules(), z=vectors(), f_t=interior_fractions, f_u=interior_fractions)
def test_gaussian_marginal_preservation(target, schedule, z, f_t, f_u):
    """The flow's Jacobian pushes the marginal covariance at t onto the one at u: M C_t M^T = C_u."""
    t, u = time_at(schedule, f_t), time_at(schedule, f_u)
    pushed, c_u = _pushforward(target, schedule, jnp.asarray(z), t, u)
    np.testing.assert_allclose(pushed, c_u, rtol=1e-6, atol=1e-7 * float(jnp.max(jnp.abs(c_u))))
