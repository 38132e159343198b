"""Invariants of the consistency parametrization (theory.md section 8 item 1; peers.md bugs 1-4)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from hypothesis import given, strategies as st

import ctjax

from .strategies import fractions, schedules, time_at, vectors


_NET = ctjax.MLP(2, width=8, depth=1, key=jr.key(0))


def _random_net(seed: int, scale: float):
    """The fixed architecture with random parameters of random scale (output layer included)."""
    params, static = eqx.partition(_NET, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jr.split(jr.key(seed), len(leaves))
    leaves = [scale * jr.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


@eqx.filter_jit
def _at_t_min(net, schedule, x, sigma_data):
    f = ctjax.ConsistencyFunction(net, schedule, ctjax.EDMScalings(sigma_data))
    return f(schedule.t_min, x)


@given(
    schedule=schedules(),
    seed=st.integers(0, 2**30),
    scale=st.floats(1e-3, 1e3),
    x=vectors(bound=50.0),
    sigma_data=st.floats(0.05, 5.0),
)
def test_boundary_condition_is_exact_for_any_parameters(schedule, seed, scale, x, sigma_data):
    """f(t_min, x) == x bit for bit, whatever the parameters (bug 1: c_skip(sigma_min) != 1)."""
    x = jnp.asarray(x)
    out = _at_t_min(_random_net(seed, scale), schedule, x, sigma_data)
    assert np.array_equal(np.asarray(out), np.asarray(x))


@jax.jit
def _scalings(schedule, t, sigma_data):
    return ctjax.EDMScalings(sigma_data)(schedule, t)


@given(schedule=schedules(), frac=fractions, sigma_data=st.floats(0.05, 5.0))
def test_unit_variance_input_and_finite_scalings(schedule, frac, sigma_data):
    """c_in^2 (alpha^2 sigma_d^2 + sigma^2) = 1 (bug 3/4: c_in missing or squared), all scalings
    finite at both ends, and the variance-exploding skip c_skip alpha / alpha_min in [0, 1]."""
    t = time_at(schedule, frac)
    c_skip, c_out, c_in, c_noise = (float(c) for c in _scalings(schedule, t, sigma_data))
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    assert all(np.isfinite(v) for v in (c_skip, c_out, c_in, c_noise))
    np.testing.assert_allclose(c_in**2 * (a**2 * sigma_data**2 + s**2), 1.0, rtol=1e-12)
    a_min = float(schedule.alpha(schedule.t_min))
    assert -1e-12 <= c_skip * a / a_min <= 1 + 1e-12
    assert c_out >= -1e-12
