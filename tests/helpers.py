"""Shared test problems and jitted evaluators (defined once so that each compiles once)."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ctjax


def assert_close(actual, desired, *, rtol=0.0, atol=0.0, err_msg=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rtol, atol=atol, err_msg=err_msg)


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8):
    return eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol)


def all_schedules():
    return [
        ctjax.LinearInterpolant(),
        ctjax.VarianceExploding(0.002, 80.0),
        ctjax.VariancePreserving(0.1, 20.0),
        ctjax.DiscreteVP.li_huang_wei(64, 2.0, 4.0),
        ctjax.TrigFlow(0.5),
    ]


def schedule_ids():
    return ["linear", "ve", "vp", "discrete_vp", "trigflow"]


def gaussian_2d():
    return ctjax.Gaussian(jnp.array([1.0, -0.5]), jnp.array([[2.0, 0.3], [0.3, 0.5]]))


def mixture_2d():
    """An anisotropic 3-component mixture with full covariances."""
    weights = jnp.array([0.5, 0.3, 0.2])
    means = jnp.array([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]])
    covs = jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.1, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.05]]])
    return ctjax.GaussianMixture(weights, means, covs)


def empirical_2d():
    pts = jnp.array([[-1.0, 0.5], [0.8, 0.9], [0.2, -1.2], [1.5, -0.3], [-0.4, -0.6]])
    return ctjax.Empirical(pts)


@ft.partial(jax.jit, static_argnames=("rtol", "atol"))
def flow_batch(target, schedule, xs, t_from, t_to, rtol=1e-9, atol=1e-9):
    fn = lambda x: ctjax.flow_map(target, schedule, x, t_from, t_to, rtol=rtol, atol=atol)
    return jax.vmap(fn)(xs)


@jax.jit
def gaussian_flow_batch(target, schedule, xs, t_from, t_to):
    return jax.vmap(lambda x: ctjax.gaussian_flow_map(target, schedule, x, t_from, t_to))(xs)


def time_at_fraction(schedule, frac):
    """A time a fraction `frac` of the way from t_min to t_max."""
    return schedule.t_min + frac * (schedule.t_max - schedule.t_min)


class CountingNet(ctjax.AbstractNetwork):
    """Delegates to `net`, counting traces (a Python side effect runs only when traced)."""

    net: ctjax.AbstractNetwork
    counter: list = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.net.dim

    def __call__(self, x, c_noise, *, key=None):
        self.counter.append(None)
        return self.net(x, c_noise, key=key)


def cli_error(argv, capsys) -> str:
    """Run the command line on `argv`; it must fail with one `ctjax: error:` line and status 2 (returned)."""
    from ctjax.experiments import main

    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ctjax: error: "), err
    return lines[0]
