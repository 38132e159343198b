r"""The error decomposition of a trained staged consistency model (Li, Huang and Wei; theory.md 1.4-1.7, 8.8).

With $\xi_k = f_k - \Phi_k$, $\Phi_k = \Phi_{t_k \to t_1}$, the exact recursion

$\xi_k(x) = (f_k - f^\star_k)(x) + E[\xi_{k-1}(X'_{k-1}) \mid X_k = x] + \delta_k(x)$,
$\delta_k(x) = E[\Phi_{k-1}(X'_{k-1}) \mid X_k = x] - \Phi_{k-1}(\varphi_k(x))$,

conditional Jensen and $X'_{k-1} \stackrel{d}{=} X_{k-1}$ give the chain
$W_1(f_T(X_T), X_1) \le E\|\xi_T(X_T)\| \le \sum_k E\|(f_k - f^\star_k)(X_k)\| + \sum_k E\|\delta_k(X_k)\|$.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._consistency import StagedConsistencyModel
from .._flow import flow_map, gaussian_flow_map
from .._misc import check_point, check_value, validate_int
from .._targets import AbstractTarget, Gaussian
from ..metrics import wasserstein1


class StageErrorTerms(eqx.Module):
    r"""The terms of the recursion at one point $x$ of stage $k$ (see `stage_error_terms`); each of shape `(dim,)`.

    - `f`: $f_k(x)$, the learned stage function.
    - `f_star`: $f^\star_k(x) = E[f_{k-1}(X'_{k-1}) \mid X_k = x]$, given the learned $f_{k-1}$.
    - `ddim`: $\mathrm{DDIM}_k(x) = E[X'_{k-1} \mid X_k = x] = r_k x + b_k D(x, t_k)$ (exact).
    - `phi`: $\Phi_k(x) = \Phi_{k-1}(\varphi_k(x))$, the exact flow to stage 1 (solved from $t_k$).
    - `delta`: $\delta_k(x) = E[\Phi_{k-1}(X'_{k-1}) \mid X_k = x] - \Phi_k(x)$.
    - `xi`: $\xi_k(x) = f_k(x) - \Phi_k(x)$.
    """

    f: Float[Array, " dim"]
    f_star: Float[Array, " dim"]
    ddim: Float[Array, " dim"]
    phi: Float[Array, " dim"]
    delta: Float[Array, " dim"]
    xi: Float[Array, " dim"]


def _flow_to_stage_one(model, target, rtol, atol):
    r"""$y \mapsto \Phi_{t \to t_1}(y)$: closed form for a Gaussian target, Diffrax otherwise."""
    t_1 = model.times[0]
    if isinstance(target, Gaussian):
        return lambda y, t: gaussian_flow_map(target, model.schedule, y, t, t_1)
    return lambda y, t: flow_map(target, model.schedule, y, t, t_1, rtol=rtol, atol=atol)


def _terms(model, target, index, x, key, num_posterior: int, rtol: float, atol: float) -> StageErrorTerms:
    """The terms at one point `x` for the 0-based stage `index` >= 1 (traceable in `index`)."""
    dtype = x.dtype
    sched = model.schedule
    t_k, t_prev = model.times[index], model.times[index - 1]
    a_k, s_k, a_p, s_p = (
        c.astype(dtype) for c in (sched.alpha(t_k), sched.sigma(t_k), sched.alpha(t_prev), sched.sigma(t_prev))
    )
    r = s_p / s_k
    b = a_p - a_k * r
    flow = _flow_to_stage_one(model, target, rtol, atol)
    # X'_{k-1} | X_k = x  is  r x + b X0 with X0 ~ p(x0 | X_k = x). The same draws feed f*_k and delta_k
    # (common random numbers), each average corrected by a control variate L(u), u = b (mean X0 - D), that
    # has zero mean because the denoiser D is exact and is linear in u: L = J_{f_{k-1}}(y0) u for the
    # teacher, and the symmetric difference (Phi_{k-1}(y0 + u) - Phi_{k-1}(y0 - u)) / 2 for the flow (no
    # derivative of an ODE solve to compile). Both averages are then exact for affine f_{k-1} and Phi_{k-1}.
    draws = target.sample_posterior(key, x, a_k, s_k, num_posterior)  # (M, dim)
    denoised = target.posterior_mean(x, a_k, s_k)
    ddim = r * x + b * denoised  # y0
    ys = r * x[None, :] + b * draws
    direction = b * (jnp.mean(draws, axis=0) - denoised)

    teacher = lambda y: model.stage(index - 1, y)
    _, teacher_cv = jax.jvp(teacher, (ddim,), (direction,))
    f_star = jnp.mean(jax.vmap(teacher)(ys), axis=0) - teacher_cv

    # One vmapped flow solve for everything: the draws and y0 +- u from t_{k-1}, and x from t_k.
    starts = jnp.concatenate([ys, (ddim + direction)[None, :], (ddim - direction)[None, :], x[None, :]])
    times = jnp.concatenate([jnp.broadcast_to(t_prev, (num_posterior + 2,)), t_k[None]])
    flows = jax.vmap(flow)(starts, times)
    flow_cv = 0.5 * (flows[num_posterior] - flows[num_posterior + 1])
    mean_flow = jnp.mean(flows[:num_posterior], axis=0) - flow_cv
    phi = flows[-1]
    f = model.stage(index, x)
    return StageErrorTerms(f=f, f_star=f_star, ddim=ddim, phi=phi, delta=mean_flow - phi, xi=f - phi)


def _check_model_target(model, target) -> None:
    if not isinstance(model, StagedConsistencyModel):
        raise TypeError(f"`model` must be a StagedConsistencyModel, got {type(model).__name__}.")
    if not isinstance(target, AbstractTarget):
        raise TypeError(
            f"`target` must be a ctjax target (Gaussian, GaussianMixture, Empirical), got {type(target).__name__}."
        )
    if model.dim != target.dim:
        raise ValueError(f"`model` has dimension {model.dim} but `target` has dimension {target.dim}; they must match.")


def stage_error_terms(
    model: StagedConsistencyModel,
    target: AbstractTarget,
    stage: Int[ArrayLike, ""],
    x: ArrayLike,
    *,
    num_posterior: int,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    key: PRNGKeyArray,
) -> StageErrorTerms:
    r"""The terms of the $\xi$ recursion at one point `x` of stage $k$ = `stage` (1-based, $2 \le k \le T$,
    may be traced): $f_k(x)$, $f^\star_k(x)$, $\mathrm{DDIM}_k(x)$, $\Phi_k(x)$, $\delta_k(x)$, $\xi_k(x)$.

    The conditional expectations over $X'_{k-1} = r_k x + b_k X_0$, $X_0 \sim p(x_0 \mid X_k = x)$, are averages
    over `num_posterior` posterior draws (the same draws for both), with the control variate
    $L(u)$, $u = b_k(\bar X_0 - D(x))$, subtracted: $L(u) = J_{f_{k-1}}(\mathrm{DDIM}_k(x))\,u$ for $f^\star_k$ and
    $(\Phi_{k-1}(\mathrm{DDIM}_k(x) + u) - \Phi_{k-1}(\mathrm{DDIM}_k(x) - u))/2$ for the flow. Both are
    linear in $u$ up to $O(|u|^3)$, and $E[u \mid x] = 0$ as the denoiser is exact, so the averages are unbiased
    for any $f_{k-1}$ (up to that third-order term for the flow), and exact when $f_{k-1}$
    and $\Phi_{k-1}$ are affine (Gaussian data with affine stage functions; then
    $\delta_k = \Phi_{k-1}(\mathrm{DDIM}_k(x)) - \Phi_k(x) = J_{\Phi_{k-1}}(\mathrm{DDIM}_k(x) - \varphi_k(x))$).
    Flow maps are the closed form for a `Gaussian` target, else `flow_map` with `rtol`, `atol`.
    Per example: jit- and vmap-able in `x`, `stage` and `key`.
    """
    _check_model_target(model, target)
    num_posterior = validate_int(num_posterior, "num_posterior", 1)
    x = check_point(x, model.dim)
    stage = check_value(
        stage,
        lambda k: (k >= 2) & (k <= model.num_stages),
        f"`stage` must be in [2, {model.num_stages}] (stage 1 is the identity)",
    )
    index = jnp.asarray(stage) - 1
    return _terms(model, target, index, x, key, num_posterior, float(rtol), float(atol))


@eqx.filter_jit
def _stage_batch(model, target, index, x0, z, keys, num_posterior: int, rtol: float, atol: float):
    points = model.schedule.interpolate(model.times[index], x0, z)  # samples of the forward marginal X_k
    terms = jax.vmap(lambda x, k: _terms(model, target, index, x, k, num_posterior, rtol, atol))(points, keys)
    norm = lambda v: jnp.linalg.norm(v, axis=-1)
    return norm(terms.f - terms.f_star), norm(terms.delta), norm(terms.xi), terms.f, terms.phi


class ErrorDecomposition(eqx.Module):
    r"""The measured terms of Li, Huang and Wei's error decomposition (theory.md 1.7, 8.8). Arrays indexed by stage
    follow `stages` (1-based stage numbers $k$); `*_se` are Monte Carlo standard errors over the sample points.

    - `optimisation`: $e_k = E\|(f_k - f^\star_k)(X_k)\|$ (training plus approximation error of stage $k$).
    - `discretisation`: $d_k = E\|\delta_k(X_k)\|$.
    - `xi`: $E\|\xi_k(X_k)\|$ at every measured stage.
    - `xi_final`: $E\|\xi_T(X_T)\|$; `w1`: $W_1(f_T(X_T), X_1)$ between `num_points` samples of each;
      `w1_floor`: $W_1(\Phi_T(X_T), X_1)$ on the same samples, the sampling floor of `w1` (zero in the limit).

    `check()` tests the chain; `report()` prints it. Build it with `staged_error_decomposition`. Host-side
    float64 NumPy.
    """

    stages: Int[np.ndarray, " S"]
    times: Float[np.ndarray, " S"]
    optimisation: Float[np.ndarray, " S"]
    optimisation_se: Float[np.ndarray, " S"]
    discretisation: Float[np.ndarray, " S"]
    discretisation_se: Float[np.ndarray, " S"]
    xi: Float[np.ndarray, " S"]
    xi_se: Float[np.ndarray, " S"]
    xi_final: float
    xi_final_se: float
    w1: float
    w1_floor: float
    num_stages: int = eqx.field(static=True)
    num_points: int = eqx.field(static=True)
    num_posterior: int = eqx.field(static=True)

    @property
    def complete(self) -> bool:
        r"""Whether every stage $k = 2..T$ was measured (only then do the sums bound $E\|\xi_T\|$)."""
        return np.array_equal(self.stages, np.arange(2, self.num_stages + 1))

    @property
    def total_optimisation(self) -> float:
        r"""$\sum_k e_k$ (the paper's $\varepsilon + \varepsilon_{\mathcal F}$)."""
        return float(np.sum(self.optimisation))

    @property
    def total_discretisation(self) -> float:
        r"""$\sum_k d_k$."""
        return float(np.sum(self.discretisation))

    @property
    def bound(self) -> float:
        r"""$\sum_k e_k + \sum_k d_k$."""
        return self.total_optimisation + self.total_discretisation

    @property
    def bound_slack(self) -> float:
        r"""One standard error of $\sum_k (e_k + d_k) - E\|\xi_T\|$ (the stages use independent samples; the
        terms of one stage share theirs, so their errors are added before squaring)."""
        per_stage = self.optimisation_se + self.discretisation_se
        return float(np.sqrt(np.sum(per_stage**2) + self.xi_final_se**2))

    def check(self, num_se: float = 3.0) -> bool:
        r"""Whether the chain $W_1(f_T(X_T), X_1) \le E\|\xi_T(X_T)\| \le \sum_k e_k + \sum_k d_k$ holds, with the
        Monte Carlo slacks:

        - first inequality: `w1` $\le$ `xi_final` + `w1_floor`. For the empirical measures this holds exactly (the
          triangle inequality, and the identity coupling of $f_T(X_T^i)$ with $\Phi_T(X_T^i)$); `w1_floor` is
          the sampling bias of `w1`, which vanishes as `num_points` grows. A relative $10^{-6}$ covers the
          flow-solve tolerance.
        - second inequality: `xi_final` $\le$ `bound` + `num_se` $\times$ `bound_slack`. Finite posterior
          samples bias $e_k$ and $d_k$ upwards only (Jensen), so this slack is conservative.

        Needs every stage $2..T$ (`complete`).
        """
        if not self.complete:
            raise ValueError(
                "check() needs every stage 2..T: the sums bound E|xi_T| only over all stages; rerun "
                "staged_error_decomposition with stages=None."
            )
        return all(self._chain(num_se))

    def _chain(self, num_se: float) -> tuple[bool, bool]:
        first = self.w1 <= (self.xi_final + self.w1_floor) * (1 + 1e-6) + 1e-12
        second = self.xi_final <= self.bound + float(num_se) * self.bound_slack
        return bool(first), bool(second)

    def report(self, num_se: float = 3.0) -> str:
        r"""A printable table: per stage $e_k$, $d_k$, $E\|\xi_k\|$ and the running bound
        $\sum_{j \le k}(e_j + d_j)$ (which bounds $E\|\xi_k\|$ too), then the totals and the chain."""
        lines = [
            f"Error decomposition of a staged consistency model: T = {self.num_stages}, {self.num_points} points per "
            f"stage, {self.num_posterior} posterior draws per point (+- one standard error).",
            f"{'stage':>5} {'t_k':>10} {'E|f_k - f*_k|':>22} {'E|delta_k|':>22} {'E|xi_k|':>22} {'sum_j<=k (e_j+d_j)':>19}",
        ]
        running = np.cumsum(self.optimisation + self.discretisation)
        for i, k in enumerate(self.stages):
            cells = [
                f"{self.optimisation[i]:.4e} +- {self.optimisation_se[i]:.1e}",
                f"{self.discretisation[i]:.4e} +- {self.discretisation_se[i]:.1e}",
                f"{self.xi[i]:.4e} +- {self.xi_se[i]:.1e}",
            ]
            lines.append(
                f"{int(k):>5} {self.times[i]:>10.4g} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} {running[i]:>19.4e}"
            )
        lines += [
            f"sum_k e_k (optimisation)          = {self.total_optimisation:.4e}",
            f"sum_k d_k (discretisation)        = {self.total_discretisation:.4e}",
            f"sum_k (e_k + d_k)                 = {self.bound:.4e} +- {self.bound_slack:.1e}",
            f"E|xi_T(X_T)|                      = {self.xi_final:.4e} +- {self.xi_final_se:.1e}",
            f"W1(f_T(X_T), X_1)                 = {self.w1:.4e}  (sampling floor W1(Phi_T(X_T), X_1) = {self.w1_floor:.4e})",
        ]
        if self.complete:
            first, second = self._chain(num_se)
            lines.append(
                f"chain: W1 <= E|xi_T| + floor: {first};  E|xi_T| <= sum (e_k + d_k) + {num_se:g} se: {second}"
            )
        else:
            lines.append("chain: not checked (only some stages measured; the sums bound E|xi_T| over all stages)")
        return "\n".join(lines)


def staged_error_decomposition(
    model: StagedConsistencyModel,
    target: AbstractTarget,
    *,
    num_points: int,
    num_posterior: int,
    key: PRNGKeyArray,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    stages: Sequence[int] | None = None,
) -> ErrorDecomposition:
    r"""Measure every term of Li, Huang and Wei's error decomposition for a trained staged model against the
    exact flow of `target` (theory.md 1.7, 8.8):
    $W_1(f_T(X_T), X_1) \le E\|\xi_T(X_T)\| \le \sum_{k=2}^T e_k + \sum_{k=2}^T d_k$ with
    $e_k = E\|(f_k - f^\star_k)(X_k)\|$ and $d_k = E\|\delta_k(X_k)\|$, where $f^\star_k$ is the stage minimiser
    given the learned $f_{k-1}$.

    **What is exact and what is Monte Carlo.**

    - Exact: the stage functions, the denoiser $D$ (so $\mathrm{DDIM}_k$), and the flow maps $\Phi_k$: closed
      form for a `Gaussian` target, otherwise `flow_map` (Diffrax) to `rtol`, `atol`.
    - Monte Carlo over $X_k$: every expectation $E\|\cdot(X_k)\|$ averages `num_points` samples of the forward
      marginal $X_k = a_k X_0 + s_k Z$, fresh for every stage; standard errors are reported.
    - Monte Carlo over the posterior: $f^\star_k(x)$ and $E[\Phi_{k-1}(X'_{k-1}) \mid X_k = x]$ average the same
      `num_posterior` draws of $X_0 \mid X_k = x$ (`sample_posterior`), with a control variate that makes them
      exact for affine $f_{k-1}$ and $\Phi_{k-1}$ (see `stage_error_terms`). Their noise biases $e_k$, $d_k$
      upwards only.
    - $W_1(f_T(X_T), X_1)$: exact optimal transport (POT) between `num_points` samples of each, reported with its
      sampling floor $W_1(\Phi_T(X_T), X_1)$ on the same samples.

    **Cost.** Per point and stage: `num_posterior` + 3 flow solves (one vmapped solve) and `num_posterior` + 2
    stage-function evaluations plus one JVP; all from one compiled function (vmapped over points, the stage
    index traced) called once per stage. With Diffrax, $T = 64$, $d = 2$, 500 points and 16 posterior draws
    this is about $6 \times 10^5$ flow solves; a Gaussian target costs next to nothing.

    **Arguments:**

    - `model`: a trained `StagedConsistencyModel` ($f_1$ = identity at $t_1$).
    - `target`: the data distribution it was trained on.
    - `num_points`: samples of $X_k$ per stage (and of $X_1$ for $W_1$).
    - `num_posterior`: posterior draws per point.
    - `key`: randomness for all samples.
    - `rtol`, `atol`: tolerances of the Diffrax flow solves.
    - `stages`: stage numbers $k \in [2, T]$ to measure (default: all); $T$ is always added, for $\xi_T$ and
      $W_1$. `check()` needs all.

    **Returns:** an `ErrorDecomposition`.
    """
    _check_model_target(model, target)
    num_points = validate_int(num_points, "num_points", 1)
    num_posterior = validate_int(num_posterior, "num_posterior", 1)
    T = model.num_stages
    if stages is None:
        chosen = list(range(2, T + 1))
    else:
        given = list(stages)
        valid = all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 2 <= k <= T for k in given)
        if not given or not valid:
            raise ValueError(f"`stages` must be integers in [2, {T}] (stage 1 is the identity), got {given}.")
        chosen = sorted({int(k) for k in given} | {T})

    per_stage = []  # device arrays, read back after the loop (no host sync per stage)
    last = None
    for k in chosen:
        k_x, k_z, k_post = jr.split(jr.fold_in(key, k), 3)
        x0 = target.sample(k_x, num_points)
        z = jr.normal(k_z, x0.shape, x0.dtype)
        e, d, xi, f, phi = _stage_batch(
            model,
            target,
            jnp.asarray(k - 1),
            x0,
            z,
            jr.split(k_post, num_points),
            num_posterior,
            float(rtol),
            float(atol),
        )
        per_stage.append((e, d, xi))
        if k == T:
            last = (f, phi)
    assert last is not None
    f_T, phi_T = (np.asarray(a, np.float64) for a in last)
    rows = {name: [] for name in ("e", "e_se", "d", "d_se", "xi", "xi_se")}
    for stage_values in per_stage:
        for name, values in zip(("e", "d", "xi"), stage_values):
            values = np.asarray(values, dtype=np.float64)
            rows[name].append(values.mean())
            rows[name + "_se"].append(values.std(ddof=1) / np.sqrt(num_points) if num_points > 1 else np.inf)

    # X_1 samples for W1 (independent of the X_T samples).
    k_x, k_z = jr.split(jr.fold_in(key, 0))
    x0 = target.sample(k_x, num_points)
    x_1 = model.schedule.interpolate(model.times[0], x0, jr.normal(k_z, x0.shape, x0.dtype))
    x_1 = np.asarray(x_1, np.float64)
    arr = lambda name: np.asarray(rows[name], dtype=np.float64)
    return ErrorDecomposition(
        stages=np.asarray(chosen, dtype=np.int64),
        times=np.asarray(model.times, np.float64)[np.asarray(chosen) - 1],
        optimisation=arr("e"),
        optimisation_se=arr("e_se"),
        discretisation=arr("d"),
        discretisation_se=arr("d_se"),
        xi=arr("xi"),
        xi_se=arr("xi_se"),
        xi_final=float(arr("xi")[-1]),
        xi_final_se=float(arr("xi_se")[-1]),
        w1=wasserstein1(f_T, x_1),
        w1_floor=wasserstein1(phi_T, x_1),
        num_stages=T,
        num_points=num_points,
        num_posterior=num_posterior,
    )
