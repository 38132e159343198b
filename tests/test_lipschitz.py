"""Lipschitz constants against independent computations: singular values of `jax.jacfwd` Jacobians, the
pairwise definition behind `gaussian_flow_lipschitz`, and closed-form linear parts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import ctjax
import ctjax.theory as th

from .helpers import assert_close, gaussian_2d, mixture_2d


VE = ctjax.VarianceExploding(0.002, 80.0)
# Well-separated eigenvalues: the two singular values of every Gaussian flow map differ, so power iteration
# converges fast.
GAUSS = ctjax.Gaussian(jnp.array([0.4, -0.2]), jnp.array([[1.6, 0.5], [0.5, 0.4]]))


def _tolerance(jacobians: np.ndarray, num_iterations: int) -> np.ndarray:
    """Relative accuracy of power iteration after m steps: of order (s2/s1)^(4m), plus rounding."""
    s = np.linalg.svd(jacobians, compute_uv=False)
    return 1e-6 + 10 * (s[:, 1] / s[:, 0]) ** (4 * num_iterations)


@pytest.mark.parametrize(
    "schedule, t_from, t_to",
    [
        (VE, 2.0, 0.5),
        (VE, 0.01, 3.0),  # noising: factors above 1
        (ctjax.VariancePreserving(0.1, 20.0), 0.7, 0.05),
        (ctjax.DiscreteVP.li_huang_wei(16, 2.0, 3.0), 12.0, 1.0),
        (ctjax.LinearInterpolant(), 0.9, 0.2),
    ],
)
def test_gaussian_flow_map_lipschitz_is_the_jacobian_norm(schedule, t_from, t_to):
    target = gaussian_2d()
    exact = th.gaussian_flow_map_lipschitz(target, schedule, t_from, t_to)
    J = jax.jacfwd(lambda x: ctjax.gaussian_flow_map(target, schedule, x, t_from, t_to))(jnp.array([0.3, -1.0]))
    assert_close(exact, np.linalg.norm(np.asarray(J), 2), rtol=1e-12)


def test_gaussian_flow_map_lipschitz_matches_the_grid_constant():
    """`gaussian_flow_lipschitz` is max over k < t of Lip(Phi_{t -> k}) on the grid: brute force over all pairs."""
    target = gaussian_2d()
    schedule = ctjax.LinearInterpolant()  # marginal variance not monotone in t: the order k < t matters
    times = np.linspace(schedule.t_min, schedule.t_max, 7)
    alphas, sigmas = th.stage_grid(schedule, jnp.asarray(times))
    pairs = [th.gaussian_flow_map_lipschitz(target, schedule, times[t], times[k]) for t in range(7) for k in range(t)]
    assert_close(th.gaussian_flow_lipschitz(target, alphas, sigmas), max(pairs), rtol=1e-12)


@eqx.filter_jit
def _jacobians(fn, points):
    return jax.vmap(jax.jacfwd(fn))(points)


class _Flow(eqx.Module):
    """The Diffrax flow map Phi_{1.5 -> 0.3} (VE) of a 3-component mixture, as a module: the Gaussian and the
    mixture below share one compiled program."""

    target: ctjax.GaussianMixture

    def __call__(self, x):
        return ctjax.flow_map(self.target, VE, x, 1.5, 0.3)


def test_estimate_on_the_diffrax_flow_of_a_gaussian_is_exact(getkey):
    # N(mu, Sigma) written as a mixture of three identical components (so it shares the mixture's program).
    mu, cov = np.asarray(GAUSS.loc), np.asarray(GAUSS.cov)
    as_mixture = ctjax.GaussianMixture(
        jnp.array([0.2, 0.3, 0.5]), jnp.asarray(np.stack([mu] * 3)), jnp.asarray(np.stack([cov] * 3))
    )
    points = GAUSS.marginal(1.0, 1.5).sample(getkey(), 6)
    estimate = th.lipschitz_estimate(_Flow(as_mixture), points, num_iterations=20, key=getkey())
    assert_close(estimate, th.gaussian_flow_map_lipschitz(GAUSS, VE, 1.5, 0.3), rtol=1e-6)


def test_estimate_on_a_mixture_flow_is_the_largest_jacobian_norm(getkey):
    target = mixture_2d()
    fn = _Flow(target)
    # Three marginal samples (in the modes, where the flow contracts) and three points between the modes,
    # where it expands: Jacobian norms 4.1, 3.8, 3.8 there.
    between = jnp.array([[0.0, 1.0], [0.5, -0.5], [-1.0, -2.0]])
    points = jnp.concatenate([target.marginal(1.0, 1.5).sample(getkey(), 3), between])
    norms = np.asarray(th.jacobian_spectral_norms(fn, points, num_iterations=20, key=getkey()))
    J = np.asarray(_jacobians(fn, points))
    exact = np.linalg.norm(J, 2, axis=(1, 2))
    tol = _tolerance(J, 20)
    np.testing.assert_array_less(np.abs(norms - exact) / exact, tol)
    assert np.all(norms <= exact * (1 + 1e-9))  # power iteration approaches the norm from below
    estimate = th.lipschitz_estimate(fn, points, num_iterations=20, key=getkey())
    assert_close(estimate, exact.max(), rtol=float(tol[np.argmax(exact)]))
    assert exact.max() > 3.0  # the mixture's flow expands between the modes: a non-trivial comparison


def test_estimate_on_learned_consistency_and_stage_functions(getkey):
    model = ctjax.ConsistencyFunction(ctjax.MLP(2, width=16, depth=2, key=getkey()), VE, ctjax.EDMScalings(0.7))
    points = jr.normal(getkey(), (16, 2))
    fn = lambda x: model(1.3, x)
    J = np.asarray(_jacobians(fn, points))
    exact = np.linalg.norm(J, 2, axis=(1, 2))
    estimate = th.lipschitz_estimate(fn, points, num_iterations=50, key=getkey())
    assert_close(estimate, exact.max(), rtol=float(_tolerance(J, 50)[np.argmax(exact)]))


def test_staged_lipschitz_of_affine_stages_is_the_norm_of_their_linear_parts(getkey):
    """Affine stage functions f_k(x) = A_k x + c_k (the exact Gaussian minimisers): Lip(f_k) = ||A_k||_2 at
    every point."""
    schedule = ctjax.DiscreteVP.li_huang_wei(8, 2.0, 3.0)
    oracle = th.staged_ct_gaussian(GAUSS, *th.stage_grid(schedule))
    model = ctjax.StagedConsistencyModel.init(lambda k: ctjax.LinearNet(2, key=k), schedule, key=getkey())
    weights, biases = [], []
    for k in range(1, 9):
        A, c = oracle.stage_map(k)
        c_skip, c_out, c_in, _ = (float(v) for v in model.scalings(schedule, model.times[k - 1]))
        scale = c_out * c_in if k > 1 else 1.0
        weights.append((A - c_skip * np.eye(2)) / scale if k > 1 else np.zeros((2, 2)))
        biases.append(c / c_out if k > 1 else np.zeros(2))
    nets = eqx.tree_at(
        lambda n: (n.weight, n.bias), model.nets, (jnp.asarray(np.stack(weights)), jnp.asarray(np.stack(biases)))
    )
    model = eqx.tree_at(lambda m: m.nets, model, nets)
    lips = th.staged_lipschitz(model, GAUSS, num_points=4, num_iterations=40, key=getkey())
    linear_parts = np.stack([oracle.stage_map(k)[0] for k in range(1, 9)])
    expected = np.linalg.norm(linear_parts, 2, axis=(1, 2))
    np.testing.assert_array_less(np.abs(lips - expected) / expected, _tolerance(linear_parts, 40))


def test_argument_errors(getkey):
    fn = lambda x: 2.0 * x
    with pytest.raises(ValueError, match="`points`"):
        th.lipschitz_estimate(fn, jnp.ones(2), key=getkey())
    with pytest.raises(ValueError, match="`num_iterations`"):
        th.lipschitz_estimate(fn, jnp.ones((3, 2)), num_iterations=0, key=getkey())
    with pytest.raises(ValueError, match="`fn`"):
        th.lipschitz_estimate(lambda x: jnp.sum(x), jnp.ones((3, 2)), key=getkey())
    with pytest.raises(TypeError, match="Gaussian"):
        th.gaussian_flow_map_lipschitz(mixture_2d(), VE, 1.0, 0.5)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="t_to"):
        th.gaussian_flow_map_lipschitz(GAUSS, VE, 1.0, 100.0)
    assert_close(th.lipschitz_estimate(fn, jnp.ones((3, 2)), key=getkey()), 2.0, rtol=1e-12)
