"""The exact flow wrapped as a flow map (issue 18): the semigroup law and the MeanFlow identity."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st

import ctjax

from .strategies import interior_fractions, mixtures, schedules, time_at, vectors


@jax.jit
def _composed(flow, x, s, u, t):
    return flow(s, t, x), flow(u, t, flow(s, u, x))


@given(
    target=mixtures(),
    schedule=schedules(),
    z=vectors(bound=2.0),
    fracs=st.lists(interior_fractions, min_size=3, max_size=3),
)
def test_exact_flow_map_semigroup(target, schedule, z, fracs):
    """X(s, t) = X(u, t) o X(s, u) for s > u > t, to solver tolerance."""
    s, u, t = (time_at(schedule, f) for f in sorted(fracs, reverse=True))
    flow = ctjax.ExactFlowMap(target, schedule)
    x = jnp.asarray(z) * jnp.hypot(schedule.alpha(s), schedule.sigma(s))
    direct, composed = _composed(flow, x, s, u, t)
    np.testing.assert_allclose(composed, direct, atol=2e-7 * max(1.0, float(jnp.max(jnp.abs(x)))))


@jax.jit
def _meanflow_terms(flow, x, s, t):
    v = ctjax.velocity(flow.target, flow.schedule, s, x)
    u, du_ds = jax.jvp(lambda a, y: flow.average_velocity(a, t, y), (s, x), (jnp.ones_like(s), v))
    # The Lagrangian equation: d/dt X(s, t, x) = v(t, X(s, t, x)).
    end, d_end = jax.jvp(lambda b: flow(s, b, x), (t,), (jnp.ones_like(t),))
    return u, v + (t - s) * du_ds, d_end, ctjax.velocity(flow.target, flow.schedule, t, end)


@given(
    target=mixtures(),
    schedule=schedules(),
    z=vectors(bound=2.0),
    fracs=st.lists(interior_fractions, min_size=2, max_size=2),
)
def test_exact_flow_map_meanflow_identity(target, schedule, z, fracs):
    """u(s, t, x) = v(s, x) + (t - s) (d/ds) u(s, t, x) along the trajectory (MeanFlow's identity), and
    the Lagrangian equation d/dt X = v(t, X), for the exact map, differentiated through Diffrax."""
    lo, hi = sorted(fracs)
    if hi - lo < 0.02:
        hi = min(lo + 0.02, 1.0)
    s, t = jnp.asarray(time_at(schedule, hi)), jnp.asarray(time_at(schedule, lo))
    flow = ctjax.ExactFlowMap(target, schedule)
    x = jnp.asarray(z) * jnp.hypot(schedule.alpha(s), schedule.sigma(s))
    u, rhs, d_end, v_end = _meanflow_terms(flow, x, s, t)
    scale = max(1.0, float(jnp.max(jnp.abs(u))), float(jnp.max(jnp.abs(v_end))))
    np.testing.assert_allclose(u, rhs, atol=1e-7 * scale)
    np.testing.assert_allclose(d_end, v_end, atol=1e-7 * scale)
