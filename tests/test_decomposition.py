"""The error decomposition of a trained staged run (`staged_error_decomposition`, `stage_error_terms`) against
independent computations: the closed-form stage minimisers of `staged_ct_gaussian`, full-matrix Gaussian flow
maps, NumPy Monte Carlo of the expected norms, Gauss-Hermite quadrature of the posterior average for a
non-linear teacher, and the closed-form branch against the Diffrax one."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from jaxtyping import Array

import ctjax
import ctjax.theory as th
from ctjax.training import fit, StagedConsistencyTraining


T = 6
TARGET = ctjax.Gaussian(jnp.array([0.8, -0.4]), jnp.array([[1.5, 0.4], [0.4, 0.5]]))
SCHEDULE = ctjax.DiscreteVP.li_huang_wei(T, 2.0, 3.0)
NUM_POINTS = 1024
MEAN, COV = np.asarray(TARGET.loc), np.asarray(TARGET.cov)
ALPHAS, SIGMAS = (np.asarray(v, np.float64) for v in th.stage_grid(SCHEDULE))


# ---------------------------------------------------------------------------------------------
# Closed forms in full matrices (NumPy float64)


def _sqrtm(v: np.ndarray) -> np.ndarray:
    lam, vecs = np.linalg.eigh(0.5 * (v + v.T))
    return (vecs * np.sqrt(np.maximum(lam, 0.0))[None, :]) @ vecs.T


def _marginal_cov(k: int) -> np.ndarray:
    r"""$C_k = a_k^2\Sigma + s_k^2 I$ (1-based stage k)."""
    return ALPHAS[k - 1] ** 2 * COV + SIGMAS[k - 1] ** 2 * np.eye(2)


def _flow(k_from: int, k_to: int) -> tuple[np.ndarray, np.ndarray]:
    r"""$\Phi_{t_{k_from} \to t_{k_to}}(x) = Jx + c$, $J = C_{to}^{1/2} C_{from}^{-1/2}$ (theory.md 7.3)."""
    J = _sqrtm(_marginal_cov(k_to)) @ np.linalg.inv(_sqrtm(_marginal_cov(k_from)))
    return J, ALPHAS[k_to - 1] * MEAN - J @ (ALPHAS[k_from - 1] * MEAN)


def _ddim(k: int) -> tuple[np.ndarray, np.ndarray]:
    r"""$\mathrm{DDIM}_k(x) = r_k x + b_k D(x)$ with the Gaussian denoiser $D(x) = \mu + a_k\Sigma C_k^{-1}(x - a_k\mu)$."""
    a, s, a_p, s_p = ALPHAS[k - 1], SIGMAS[k - 1], ALPHAS[k - 2], SIGMAS[k - 2]
    r, b = s_p / s, a_p - a * s_p / s
    gain = a * COV @ np.linalg.inv(_marginal_cov(k))
    return r * np.eye(2) + b * gain, b * (MEAN - gain @ (a * MEAN))


_Z = np.random.default_rng(0).standard_normal((2**19, 2))


def _expected_norm(k: int, L: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    r"""$E\|L X_k + c\|$, $X_k \sim N(a_k\mu, C_k)$, by Monte Carlo over $2^{19}$ draws: (mean, standard error)."""
    norms = np.linalg.norm((_Z @ _sqrtm(L @ _marginal_cov(k) @ L.T)) + (L @ (ALPHAS[k - 1] * MEAN) + c), axis=1)
    return float(norms.mean()), float(norms.std() / np.sqrt(norms.shape[0]))


def _learned_maps(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """$(G_k, h_k)$ of each affine stage function $f_k(x) = G_k x + h_k$ of a `LinearNet` staged model."""
    out = []
    for index in range(T):
        f = lambda x, index=index: model.stage(index, x)
        out.append((np.asarray(jax.jacfwd(f)(jnp.zeros(2))), np.asarray(f(jnp.zeros(2)))))
    return out


# ---------------------------------------------------------------------------------------------
# One trained run, shared


@pytest.fixture(scope="module")
def run():
    """Staged CT (sequential, the paper's scheme) with affine stage networks, stopped early: 40 Adam steps per
    stage, so every stage carries an optimisation error."""
    model = ctjax.StagedConsistencyModel.init(lambda k: ctjax.LinearNet(2, key=k), SCHEDULE, key=jr.key(0))
    trainer = StagedConsistencyTraining(optax.adam(2e-2), "sequential", steps_per_stage=40)
    state = trainer.init(model, key=jr.key(1))
    state, _ = fit(trainer, state, TARGET, num_steps=trainer.total_steps(model), batch_size=256, progress=False)
    model = trainer.result(state)
    dec = th.staged_error_decomposition(model, TARGET, num_points=NUM_POINTS, num_posterior=2, key=jr.key(2))
    return model, dec


def _exact_terms(model):
    r"""Per stage k = 2..T: the affine maps $(L, c)$ of $f_k - f^\star_k$, $\delta_k$ and $\xi_k$, with $f^\star_k$
    from the oracle's closed-form stage minimiser $(M_k, m_k)$ given the learned $f_{k-1}$."""
    oracle = th.staged_ct_gaussian(TARGET, ALPHAS, SIGMAS)
    maps = _learned_maps(model)
    terms = {}
    for k in range(2, T + 1):
        M, m = oracle.stage_minimiser(k)
        (G_p, h_p), (G, h) = maps[k - 2], maps[k - 1]
        J_prev, c_prev = _flow(k - 1, 1)
        J_step, c_step = _flow(k, k - 1)
        J, c = _flow(k, 1)
        terms[k] = {
            "optimisation": (G - G_p @ M, h - G_p @ m - h_p),
            "discretisation": (J_prev @ (M - J_step), J_prev @ (m - c_step)),
            "xi": (G - J, h - c),
        }
    return terms


@pytest.fixture(scope="module")
def exact(run):
    """Per stage: the exact affine terms and their expected norms `(value, standard error)` by Monte Carlo."""
    model, _ = run
    terms = _exact_terms(model)
    return terms, {k: {name: _expected_norm(k, *lc) for name, lc in terms[k].items()} for k in terms}


def test_oracle_stage_minimisers_are_the_ddim_step():
    """The oracle's $(M_k, m_k)$ are one exact-denoiser DDIM step (theory.md 7.6), here in full matrices."""
    oracle = th.staged_ct_gaussian(TARGET, ALPHAS, SIGMAS)
    for k in range(2, T + 1):
        M, m = oracle.stage_minimiser(k)
        M_ref, m_ref = _ddim(k)
        np.testing.assert_allclose(M, M_ref, rtol=0, atol=1e-13)
        np.testing.assert_allclose(m, m_ref, rtol=0, atol=1e-13)


@jax.jit
def _terms_at(model, target, stage, xs, key):
    keys = jr.split(key, xs.shape[0])
    fn = lambda x, k: th.stage_error_terms(model, target, stage, x, num_posterior=3, key=k)
    return jax.vmap(fn)(xs, keys)


def test_terms_at_points_match_the_closed_forms(run):
    r"""`stage_error_terms` on the trained model, at three points per stage: $f_k$, $f^\star_k$ (the oracle's
    $G_{k-1}(M_k x + m_k) + h_{k-1}$), $\mathrm{DDIM}_k$, $\Phi_k$, $\delta_k = \Phi_{k-1}(\mathrm{DDIM}_k(x)) -
    \Phi_k(x)$ and $\xi_k$ to 1e-10: the control variates make the 3-draw posterior averages exact for affine
    maps. The stage is traced (one compilation for all stages)."""
    model, _ = run
    oracle = th.staged_ct_gaussian(TARGET, ALPHAS, SIGMAS)
    maps = _learned_maps(model)
    xs = np.array([[0.3, -1.2], [2.0, 0.5], [-1.5, 1.0]])
    for k in range(2, T + 1):
        terms = _terms_at(model, TARGET, jnp.asarray(k), jnp.asarray(xs), jr.key(k))
        M, m = oracle.stage_minimiser(k)
        (G_p, h_p), (G, h) = maps[k - 2], maps[k - 1]
        ddim = xs @ M.T + m
        J, c = _flow(k, 1)
        J_prev, c_prev = _flow(k - 1, 1)
        phi = xs @ J.T + c
        expected = {
            "f": xs @ G.T + h,
            "f_star": ddim @ G_p.T + h_p,
            "ddim": ddim,
            "phi": phi,
            "delta": ddim @ J_prev.T + c_prev - phi,
            "xi": xs @ G.T + h - phi,
        }
        for name, value in expected.items():
            np.testing.assert_allclose(getattr(terms, name), value, rtol=0, atol=1e-10, err_msg=f"{name}, k={k}")


def test_expected_norms_match_monte_carlo(run, exact):
    r"""$e_k = E\|(f_k - f^\star_k)(X_k)\|$, $d_k = E\|\delta_k(X_k)\|$ and $E\|\xi_k(X_k)\|$ from the decomposition
    (1024 points) agree with NumPy Monte Carlo over $2^{19}$ draws of the exact affine terms within 5 combined
    standard errors; the standard errors are below 3% of the values, the optimisation errors are non-zero
    (each > 20 standard errors), and measuring them against the oracle's chain $f^\star_k$ instead of the
    minimiser given the learned $f_{k-1}$ would be detected."""
    model, dec = run
    np.testing.assert_array_equal(dec.stages, np.arange(2, T + 1))
    np.testing.assert_array_equal(dec.times, np.arange(2, T + 1, dtype=np.float64))
    for j, k in enumerate(dec.stages):
        for name, (value, se_mc) in exact[1][int(k)].items():
            measured, se = getattr(dec, name)[j], getattr(dec, name + "_se")[j]
            assert abs(measured - value) <= 5 * np.hypot(se, se_mc), (name, k, measured, value, se)
            assert se <= 0.03 * value, (name, k, se, value)
        assert dec.optimisation[j] > 20 * dec.optimisation_se[j]
    # The oracle's own chain f*_k = A_k x + c_k (minimisers given the exact f*_{k-1}) is the wrong reference.
    oracle = th.staged_ct_gaussian(TARGET, ALPHAS, SIGMAS)
    maps = _learned_maps(model)
    wrong = []
    for k in range(2, T + 1):
        A, c = oracle.stage_map(k)
        wrong.append(_expected_norm(k, maps[k - 1][0] - A, maps[k - 1][1] - c)[0])
    assert np.max(np.abs(np.asarray(wrong) - dec.optimisation) / dec.optimisation_se) > 20


def test_inequality_chain(run, exact):
    r"""$W_1(f_T(X_T), X_1) \le E\|\xi_T\| \le \sum_k (e_k + d_k)$ on the measurement (`check()`), at every stage
    $E\|\xi_k\| \le \sum_{j \le k}(e_j + d_j)$, and on the exact values the one-step recursion
    $E\|\xi_k\| \le E\|\xi_{k-1}\| + e_k + d_k$ and the lower bound $\|E f_T(X_T) - E X_1\| \le E\|\xi_T\|$."""
    model, dec = run
    assert dec.complete and dec.check()
    assert dec.w1 <= dec.xi_final + dec.w1_floor
    assert dec.xi_final <= dec.bound
    np.testing.assert_allclose(dec.bound, np.sum(dec.optimisation) + np.sum(dec.discretisation), rtol=1e-14)
    running = np.cumsum(dec.optimisation + dec.discretisation)
    assert np.all(dec.xi <= running + 3 * dec.xi_se)
    values = {k: {name: v[0] for name, v in per_stage.items()} for k, per_stage in exact[1].items()}
    previous = 0.0  # xi_1 = f_1 - Phi_1 = 0
    for k in range(2, T + 1):
        v = values[k]
        assert v["xi"] <= previous + v["optimisation"] + v["discretisation"] + 1e-3 * v["xi"], (k, v, previous)
        previous = v["xi"]
    G, h = _learned_maps(model)[-1]
    mean_gap = np.linalg.norm(G @ (ALPHAS[-1] * MEAN) + h - ALPHAS[0] * MEAN)
    assert mean_gap <= values[T]["xi"]


def test_check_and_report_flag_a_violated_term(run):
    """`check()` is False when either inequality is broken beyond its slack, and `report()` says so."""
    _, dec = run
    too_large_xi = eqx.tree_at(lambda d: d.xi_final, dec, dec.bound + 4 * dec.bound_slack)
    assert not too_large_xi.check()
    assert too_large_xi.check(num_se=5.0)  # ... within 5 standard errors it is not a violation
    assert "sum (e_k + d_k) + 3 se: False" in too_large_xi.report()
    too_large_w1 = eqx.tree_at(lambda d: d.w1, dec, 1.01 * (dec.xi_final + dec.w1_floor))
    assert not too_large_w1.check()
    assert "W1 <= E|xi_T| + floor: False" in too_large_w1.report()
    # Terms too small to account for E|xi_T| (as if the discretisation error had been missed).
    smaller_terms = eqx.tree_at(
        lambda d: (d.optimisation, d.discretisation), dec, (0.3 * dec.optimisation, 0.0 * dec.discretisation)
    )
    assert smaller_terms.xi_final > smaller_terms.bound + 3 * smaller_terms.bound_slack
    assert not smaller_terms.check()
    report = dec.report()
    assert "chain: W1 <= E|xi_T| + floor: True;  E|xi_T| <= sum (e_k + d_k) + 3 se: True" in report
    assert f"{dec.xi_final:.4e}" in report and f"{dec.bound:.4e}" in report and f"{dec.w1:.4e}" in report


def test_a_subset_of_stages_is_the_same_measurement(run):
    """`stages=[3]` measures stages 3 and T (always added) with the same samples as the full run: identical rows
    and $W_1$; `check()` refuses the incomplete decomposition and `report()` says it is not checked."""
    model, dec = run
    sub = th.staged_error_decomposition(
        model, TARGET, num_points=NUM_POINTS, num_posterior=2, key=jr.key(2), stages=[3]
    )
    np.testing.assert_array_equal(sub.stages, [3, T])
    rows = np.array([1, T - 2])
    for name in ("optimisation", "discretisation", "xi", "optimisation_se", "discretisation_se", "xi_se", "times"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(dec, name)[rows], err_msg=name)
    assert (sub.w1, sub.w1_floor, sub.xi_final) == (dec.w1, dec.w1_floor, dec.xi_final)
    assert not sub.complete
    with pytest.raises(ValueError, match="every stage"):
        sub.check()
    assert "not checked" in sub.report()


def test_argument_errors(run):
    model, _ = run
    with pytest.raises(ValueError, match="`stages`"):
        th.staged_error_decomposition(model, TARGET, num_points=4, num_posterior=1, key=jr.key(0), stages=[1])
    with pytest.raises(ValueError, match="`num_points`"):
        th.staged_error_decomposition(model, TARGET, num_points=0, num_posterior=1, key=jr.key(0))
    with pytest.raises(ValueError, match="`num_posterior`"):
        th.stage_error_terms(model, TARGET, 2, jnp.zeros(2), num_posterior=0, key=jr.key(0))
    with pytest.raises(ValueError, match="`stage`"):
        th.stage_error_terms(model, TARGET, 1, jnp.zeros(2), num_posterior=1, key=jr.key(0))
    with pytest.raises(ValueError, match="dimension"):
        th.staged_error_decomposition(
            model, ctjax.Gaussian(jnp.zeros(3), jnp.eye(3)), num_points=4, num_posterior=1, key=jr.key(0)
        )
    with pytest.raises(TypeError, match="StagedConsistencyModel"):
        th.staged_error_decomposition(
            ctjax.ExactConsistencyFunction(TARGET, SCHEDULE),  # pyright: ignore[reportArgumentType]
            TARGET,
            num_points=4,
            num_posterior=1,
            key=jr.key(0),
        )


# ---------------------------------------------------------------------------------------------
# A non-linear teacher: the posterior average against quadrature


class _TanhNet(ctjax.AbstractNetwork):
    r"""$F(x, c) = \tanh(Wx + v) + b$: smooth and clearly non-linear."""

    weight: Array
    shift: Array
    bias: Array

    @property
    def dim(self) -> int:
        return self.bias.shape[-1]

    def __call__(self, x, c_noise, *, key=None):
        return jnp.tanh(self.weight @ x + self.shift) + self.bias


def _tanh_model():
    rng = np.random.default_rng(3)
    nets = _TanhNet(*(jnp.asarray(rng.normal(size=shape)) for shape in ((T, 2, 2), (T, 2), (T, 2))))
    return ctjax.StagedConsistencyModel(nets, SCHEDULE, SCHEDULE.stage_times())


@eqx.filter_jit
def _f_star_estimates(model, stage, x, keys):
    fn = lambda k: th.stage_error_terms(model, TARGET, stage, x, num_posterior=4096, key=k)
    return jax.vmap(fn)(keys)


@eqx.filter_jit
def _teacher(model, index, ys):
    return jax.vmap(lambda y: model.stage(index, y))(ys)


def test_non_linear_teacher_average_matches_quadrature():
    r"""For a non-linear teacher $f_{k-1}$, $f^\star_k(x) = E[f_{k-1}(r_k x + b_k X_0) \mid X_k = x]$ from 4096 posterior
    draws (16 independent repetitions) matches a $40^2$-node Gauss-Hermite quadrature over the Gaussian posterior
    within 5 standard errors, and the Jensen gap $f^\star_k(x) - f_{k-1}(\mathrm{DDIM}_k(x))$ is over 20 standard
    errors (the average is not the plug-in). $\delta_k$ involves only the affine flow: exact whatever the draws."""
    model, k = _tanh_model(), 5
    x = np.array([0.7, -0.9])
    a, s = ALPHAS[k - 1], SIGMAS[k - 1]
    r, b = SIGMAS[k - 2] / s, ALPHAS[k - 2] - a * SIGMAS[k - 2] / s
    gain = a * COV @ np.linalg.inv(_marginal_cov(k))
    post_mean = MEAN + gain @ (x - a * MEAN)
    post_cov = COV - a * gain @ COV
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / np.sqrt(2 * np.pi)
    grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    w2d = np.outer(weights, weights).reshape(-1)
    x0s = post_mean + grid @ np.linalg.cholesky(post_cov).T
    values = np.asarray(_teacher(model, jnp.asarray(k - 2), jnp.asarray(r * x + b * x0s)))
    exact = w2d @ values
    terms = _f_star_estimates(model, jnp.asarray(k), jnp.asarray(x), jr.split(jr.key(5), 16))
    estimates = np.asarray(terms.f_star)
    mean, se = estimates.mean(axis=0), estimates.std(axis=0, ddof=1) / 4.0
    assert np.all(np.abs(mean - exact) <= 5 * se + 1e-10), (mean, exact, se)  # + quadrature accuracy
    plug_in = np.asarray(_teacher(model, jnp.asarray(k - 2), jnp.asarray((r * x + b * post_mean)[None])))[0]
    assert np.max(np.abs(exact - plug_in) / se) > 20, (exact, plug_in, se)
    J_prev, c_prev = _flow(k - 1, 1)
    J, c = _flow(k, 1)
    ddim = r * x + b * post_mean
    np.testing.assert_allclose(terms.delta, np.tile(J_prev @ ddim + c_prev - (J @ x + c), (16, 1)), atol=1e-10)


# ---------------------------------------------------------------------------------------------
# The Diffrax branch (non-Gaussian targets) against the closed-form one


def test_diffrax_flows_agree_with_the_closed_form_branch(run):
    """The Gaussian written as a mixture of two identical components takes the Diffrax branch (`flow_map`,
    rtol = atol = 1e-8); at three points of stage 4 every term agrees with the closed-form branch to 1e-6."""
    model, _ = run
    as_mixture = ctjax.GaussianMixture(
        jnp.array([0.4, 0.6]), jnp.stack([TARGET.loc, TARGET.loc]), jnp.stack([TARGET.cov, TARGET.cov])
    )
    xs = jnp.array([[0.3, -1.2], [2.0, 0.5], [-1.5, 1.0]])
    keys = jr.split(jr.key(7), 3)
    fn = lambda target, x, k: th.stage_error_terms(model, target, 4, x, num_posterior=3, rtol=1e-8, atol=1e-8, key=k)
    solved = eqx.filter_jit(jax.vmap(lambda x, k: fn(as_mixture, x, k)))(xs, keys)
    closed = eqx.filter_jit(jax.vmap(lambda x, k: fn(TARGET, x, k)))(xs, keys)
    for name in ("f", "f_star", "ddim", "phi", "delta", "xi"):
        np.testing.assert_allclose(getattr(solved, name), getattr(closed, name), rtol=0, atol=1e-6, err_msg=name)
    assert float(jnp.max(jnp.abs(closed.delta))) > 1e-2  # a non-trivial comparison
