r"""Exact staged consistency training for a Gaussian target (theory.md sections 7.3 and 7.6).

With $X_0 \sim N(\mu, \Sigma)$, $\Sigma = U \mathrm{diag}(\lambda) U^\top$, and $f_1 = \mathrm{id}$, every exact
stage minimiser $f^\star_k$ is affine and diagonal in $U$, so the whole recursion is a cumulative product
and a cumulative sum over a `(T, d)` array.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._misc import as_float_array, check_point, check_value, check_values, diff, finite, is_concrete
from .._schedules import AbstractSchedule, DiscreteVP
from .._targets import Gaussian


def stage_grid(schedule: AbstractSchedule, times: ArrayLike | None = None) -> tuple[Array, Array]:
    r"""The coefficients $(\alpha(t_k), \sigma(t_k))_{k=1}^T$ of a stage grid $t_1 < \dots < t_T$.

    **Arguments:**

    - `schedule`: any ctjax schedule.
    - `times`: shape `(T,)`, strictly increasing, inside `[t_min, t_max]`. Optional for `DiscreteVP`,
      whose stages are its grid $t = 1, \dots, T$ (`stage_times()`); required for every other schedule.

    **Returns:** `(alphas, sigmas)`, each of shape `(T,)`.
    """
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(f"`schedule` must be a ctjax schedule, got {type(schedule).__name__}.")
    if times is None:
        if not isinstance(schedule, DiscreteVP):
            raise ValueError(
                f"{type(schedule).__name__} has no built-in stage grid; pass `times`, an increasing 1-D array of "
                "stage times inside [t_min, t_max] (for example `schedule.karras_grid(T)`)."
            )
        # The stage coefficients themselves: alpha(k), sigma(k) at t = k, without interpolation.
        log_alpha_bar = schedule.log_alpha_bar
        return jnp.exp(0.5 * log_alpha_bar), jnp.sqrt(-jnp.expm1(log_alpha_bar))
    times = as_float_array(times, "times")
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"`times` must be a 1-D array of at least 2 stage times, got shape {tuple(times.shape)}.")
    times = check_value(
        times,
        lambda t: finite(t).all() & (diff(t) > 0).all(),
        "`times` must be finite and strictly increasing (stage 1 is the data end)",
        show=False,
    )
    times = check_value(
        times,
        lambda t: (t[0] >= schedule.t_min) & (t[-1] <= schedule.t_max),
        f"`times` must lie inside [t_min, t_max] of {type(schedule).__name__}; clip it to the schedule's range",
    )
    return _coefficients_at(schedule, times)


@eqx.filter_jit
def _coefficients_at(schedule: AbstractSchedule, times: Array) -> tuple[Array, Array]:
    return jnp.asarray(schedule.alpha(times)), jnp.asarray(schedule.sigma(times))


def check_grid(alphas: ArrayLike, sigmas: ArrayLike, *arrays: ArrayLike) -> tuple[Array, ...]:
    """Validate a stage grid and cast it, and `arrays`, to one floating JAX dtype (for the jit-able oracles)."""
    a, s = _check_grid_values(as_float_array(alphas, "alphas"), as_float_array(sigmas, "sigmas"))
    dtype = np.result_type(*(np.dtype(x.dtype) for x in (a, s, *map(jnp.asarray, arrays))))
    return tuple(jnp.asarray(x).astype(dtype) for x in (a, s, *arrays))


def _check_grid_values(alphas: Any, sigmas: Any) -> tuple[Any, ...]:
    if alphas.ndim != 1 or alphas.shape[0] < 2 or sigmas.shape != alphas.shape:
        raise ValueError(
            "`alphas` and `sigmas` must be 1-D arrays of the same length T >= 2 (one entry per stage), got shapes "
            f"{tuple(alphas.shape)} and {tuple(sigmas.shape)}; `stage_grid(schedule, times)` builds them."
        )
    alphas, sigmas = check_values(
        ("alphas", "sigmas"),
        (alphas, sigmas),
        lambda a, s: finite(a).all() & finite(s).all(),
        "`alphas` and `sigmas` must be finite",
    )
    return check_values(
        ("alphas", "sigmas"),
        (alphas, sigmas),
        lambda a, s: (a >= 0).all() & (s >= 0).all() & (s[1:] > 0).all(),
        "Need alphas >= 0, sigmas >= 0 and sigmas > 0 from stage 2 on (the stage minimiser divides by "
        "sigma_k); only stage 1 may sit at zero noise",
    )


def host_array(x: ArrayLike, name: str, what: str) -> np.ndarray:
    """`x` as a float64 NumPy array; a clear error for traced values (the oracles are host-side)."""
    if not is_concrete(x):
        raise TypeError(
            f"{what} is a host-side float64 oracle: `{name}` must be concrete, not traced. Call it outside "
            "jax.jit/vmap (its result can be closed over)."
        )
    return np.asarray(x, dtype=np.float64)


def host_grid(alphas: ArrayLike, sigmas: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A validated stage grid as float64 NumPy arrays."""
    a, s = host_array(alphas, "alphas", what), host_array(sigmas, "sigmas", what)
    a, s = _check_grid_values(a, s)
    return a, s


def host_eigh(target: Gaussian, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The target's eigendecomposition in float64 (recomputed from the covariance if it is stored in lower
    precision)."""
    if not isinstance(target, Gaussian):
        raise TypeError(f"`target` must be a ctjax.Gaussian, got {type(target).__name__}.")
    lam, vecs = host_array(target.eigvals, "target", what), host_array(target.eigvecs, "target", what)
    if target.eigvals.dtype != np.float64:
        lam, vecs = np.linalg.eigh(host_array(target.cov, "target", what))
    return lam, vecs


def _ddim(lam: np.ndarray, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    a0, a1, s0, s1 = (v[:, None] for v in (a[:-1], a[1:], s[:-1], s[1:]))
    return (s0 * s1 + a0 * a1 * lam[None, :]) / (a1**2 * lam[None, :] + s1**2)


def ddim_factors(eigvals: ArrayLike, alphas: ArrayLike, sigmas: ArrayLike) -> Float[np.ndarray, "T-1 dim"]:
    r"""Per stage $k = 2..T$ (rows) and eigen-direction $i$ (columns), the factor of one exact-denoiser
    DDIM step, which is the linear part of the stage minimiser with an identity teacher:

    $M_{k,i} = r_k + b_k a_k \lambda_i / (a_k^2\lambda_i + s_k^2)
    = (s_{k-1}s_k + a_{k-1}a_k\lambda_i) / (a_k^2\lambda_i + s_k^2)$.

    By Cauchy-Schwarz it is at most the exact factor (`exact_factors`), with equality iff
    $\lambda_i (a_{k-1}s_k - a_k s_{k-1})^2 = 0$ (theory.md 8.7). Host-side float64.
    """
    a, s = host_grid(alphas, sigmas, "ddim_factors")
    return _ddim(host_array(eigvals, "eigvals", "ddim_factors").reshape(-1), a, s)


def exact_factors(eigvals: ArrayLike, alphas: ArrayLike, sigmas: ArrayLike) -> Float[np.ndarray, "T-1 dim"]:
    r"""Per stage $k = 2..T$ and eigen-direction $i$, the factor of the exact flow map
    $\Phi_{t_k \to t_{k-1}}$: $\sqrt{(a_{k-1}^2\lambda_i + s_{k-1}^2)/(a_k^2\lambda_i + s_k^2)}$.
    Their product over stages is $\rho^{ex}_i$. Host-side float64."""
    a, s = host_grid(alphas, sigmas, "exact_factors")
    lam = host_array(eigvals, "eigvals", "exact_factors").reshape(-1)
    var = a[:, None] ** 2 * lam[None, :] + s[:, None] ** 2
    return np.sqrt(var[:-1] / var[1:])


class GaussianStagedCT(eqx.Module):
    r"""The exact staged-CT minimisers $f^\star_1 = \mathrm{id}, f^\star_2, \dots, f^\star_T$ for
    $N(\mu, \Sigma)$ data (theory.md 7.6), all in the eigenbasis $U$ of $\Sigma$:

    $f^\star_k(x) = A_k x + c_k$, $A_k = A_{k-1} M_k$, $c_k = A_{k-1} m_k + c_{k-1}$, with
    $M_k = r_k I + b_k a_k \Sigma C_k^{-1}$, $m_k = b_k s_k^2 C_k^{-1}\mu$, $C_k = a_k^2\Sigma + s_k^2 I$.

    Build it with `staged_ct_gaussian`. A host-side oracle: its arrays are float64 NumPy arrays, whatever
    JAX's precision setting, and its methods return NumPy values (except `__call__`, which is JAX, for
    comparisons inside jit). Arrays indexed by stage have `T` rows, row `k - 1` for stage `k`; row 0 is stage 1
    (the identity: factor 1, offset 0, loss floor 0). Factors and offsets are in the eigenbasis:
    $A_k = U \mathrm{diag}(\texttt{factors[k-1]}) U^\top$, $c_k = U\,\texttt{offsets[k-1]}$.
    """

    loc: Float[np.ndarray, " dim"]
    eigvals: Float[np.ndarray, " dim"]
    eigvecs: Float[np.ndarray, "dim dim"]
    alphas: Float[np.ndarray, " T"]
    sigmas: Float[np.ndarray, " T"]
    factors: Float[np.ndarray, "T dim"]
    offsets: Float[np.ndarray, "T dim"]
    loss_floors: Float[np.ndarray, " T"]

    @property
    def num_stages(self) -> int:
        return self.alphas.shape[0]

    @property
    def dim(self) -> int:
        return self.loc.shape[0]

    @property
    def rho_exact(self) -> Float[np.ndarray, " dim"]:
        r"""Factors of the exact flow $\Phi_{t_T \to t_1}$:
        $\rho^{ex}_i = \sqrt{(a_1^2\lambda_i + s_1^2)/(a_T^2\lambda_i + s_T^2)}$."""
        return np.sqrt(self._marginal_var(0) / self._marginal_var(-1))

    @property
    def rho_ct(self) -> Float[np.ndarray, " dim"]:
        r"""Factors of the CT fixed point $f^\star_T$ (the diagonal of $A_T$):
        $\rho^{CT}_i = \prod_{k=2}^T M_{k,i}$."""
        return self.factors[-1]

    def _marginal_var(self, row: int) -> np.ndarray:
        return self.alphas[row] ** 2 * self.eigvals + self.sigmas[row] ** 2

    def _check_stage(self, k: int, lowest: int = 1) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not lowest <= int(k) <= self.num_stages:
            raise ValueError(f"The stage must be an integer in [{lowest}, {self.num_stages}], got {k!r}.")
        return int(k)

    def _to_matrix(self, diag: np.ndarray) -> np.ndarray:
        return (self.eigvecs * diag[None, :]) @ self.eigvecs.T

    def stage_map(self, k: int) -> tuple[Float[np.ndarray, "dim dim"], Float[np.ndarray, " dim"]]:
        r"""$(A_k, c_k)$ of $f^\star_k(x) = A_k x + c_k$, in the original coordinates."""
        k = self._check_stage(k)
        return self._to_matrix(self.factors[k - 1]), self.eigvecs @ self.offsets[k - 1]

    def stage_minimiser(self, k: int) -> tuple[Float[np.ndarray, "dim dim"], Float[np.ndarray, " dim"]]:
        r"""$(M_k, m_k)$, $k \ge 2$: for any affine teacher $f_{k-1}(y) = Ay + c$ the stage-$k$ minimiser is
        $x \mapsto A M_k x + A m_k + c$ (original coordinates)."""
        k = self._check_stage(k, lowest=2)
        M, m, _, _ = _stage_terms(
            self.eigvals, self.eigvecs.T @ self.loc, self.alphas[k - 2 : k], self.sigmas[k - 2 : k]
        )
        return self._to_matrix(M[0]), self.eigvecs @ m[0]

    def __call__(self, x: ArrayLike, stage: int | None = None) -> Float[Array, " dim"]:
        r"""$f^\star_k(x)$ for one point `x` of shape `(dim,)` (JAX; jit- and vmap-able in `x`); `stage`
        defaults to $T$."""
        k = self.num_stages if stage is None else self._check_stage(stage)
        x = check_point(x, self.dim)
        vecs, factor, offset = (
            jnp.asarray(v, dtype=x.dtype) for v in (self.eigvecs, self.factors[k - 1], self.offsets[k - 1])
        )
        return vecs @ (factor * (vecs.T @ x) + offset)

    def variance_trace(self, k: int) -> float:
        r"""$\mathrm{tr}\,\mathrm{Cov}(f^\star_k(X_k)) = \sum_i A_{k,i}^2 (a_k^2\lambda_i + s_k^2)$; stage 1 gives
        $\mathrm{tr}\,\mathrm{Cov}(X_1)$, and $\mathrm{tr}\,\mathrm{Cov}(X_1) - \mathrm{tr}\,\mathrm{Cov}(f^\star_T(X_T))
        = \sum_k L^\star_k$ (theory.md 8.6)."""
        k = self._check_stage(k)
        return float(np.sum(self.factors[k - 1] ** 2 * self._marginal_var(k - 1)))

    def mean_error(self) -> Float[np.ndarray, " dim"]:
        r"""$E f^\star_T(X_T) - E X_1 = A_T a_T \mu + c_T - a_1\mu$: zero up to rounding (theory.md 8.5)."""
        mu = self.eigvecs.T @ self.loc
        err = self.factors[-1] * (self.alphas[-1] * mu) + self.offsets[-1] - self.alphas[0] * mu
        return self.eigvecs @ err

    def w2(self) -> float:
        r"""$W_2(f^\star_T(X_T), X_1)$ with $X_T$ from the forward process:
        $\big(\sum_i (\rho^{ex}_i - \rho^{CT}_i)^2 (a_T^2\lambda_i + s_T^2) + \|\text{mean error}\|^2\big)^{1/2}$.

        Both laws are Gaussian with covariances diagonal in $U$, so this is the Bures formula
        without its cancellation."""
        spread = (self.rho_exact - np.abs(self.rho_ct)) ** 2 * self._marginal_var(-1)
        return float(np.sqrt(np.sum(spread) + np.sum(self.mean_error() ** 2)))

    def w2_from_standard_normal(self) -> float:
        r"""$W_2(f^\star_T(Z), X_1)$ with $Z \sim N(0, I)$, the one-step sampler's input:
        $f^\star_T(Z) \sim N(c_T, A_T A_T^\top)$ against $X_1 \sim N(a_1\mu, C_1)$, by the Bures formula
        (diagonal in $U$)."""
        mu = self.eigvecs.T @ self.loc
        spread = (np.abs(self.factors[-1]) - np.sqrt(self._marginal_var(0))) ** 2
        mean = self.offsets[-1] - self.alphas[0] * mu
        return float(np.sqrt(np.sum(spread) + np.sum(mean**2)))


def staged_ct_gaussian(target: Gaussian, alphas: ArrayLike, sigmas: ArrayLike) -> GaussianStagedCT:
    r"""The exact staged-CT minimisers with coupled noise for a Gaussian target on a stage grid.

    **Arguments:**

    - `target`: a `Gaussian`.
    - `alphas`, `sigmas`: shape `(T,)`, the coefficients $a_k, s_k$ at the stage times
      (`stage_grid(schedule, times)`).

    **Returns:** a `GaussianStagedCT`. Host-side NumPy in float64: with many stages $1 - \rho$ is of order
    $10^{-4}$, comparable to float32 rounding accumulated over $T$ factors. Cost $O(Td)$ after the target's
    eigendecomposition: cumulative products and sums over a `(T, d)` array, taken in cache-sized blocks of
    stages; $T = 2^{14}$, $d = 1024$ takes about two seconds. For exact figures pass a grid computed in
    float64 (`jax_enable_x64`): a float32 grid already rounds $b_k = O(\beta_k)$.
    """
    what = "staged_ct_gaussian"
    lam, vecs = host_eigh(target, what)
    a, s = host_grid(alphas, sigmas, what)
    loc = host_array(target.loc, "target", what)
    mu = vecs.T @ loc
    T, d = a.shape[0], lam.shape[0]
    factors, offsets, floors = np.empty((T, d)), np.empty((T, d)), np.zeros(T)
    factors[0], offsets[0] = 1.0, 0.0  # f_1 = id
    # np.cumprod / np.cumsum over blocks of stages that fit in cache (one pass over memory instead of one
    # per temporary); the Python loop runs over blocks of ~2^17 / d stages, never over single stages.
    block = max(1, 2**17 // d)
    for lo in range(1, T, block):
        hi = min(T, lo + block)
        M, m, post_var, b = _stage_terms(lam, mu, a[lo - 1 : hi], s[lo - 1 : hi])
        A_prev = factors[lo - 1]
        A = np.cumprod(M, axis=0)
        A *= A_prev[None, :]  # A_k = A_{k-1} M_k
        prev = np.concatenate([A_prev[None, :], A[:-1]])  # A_{k-1} for k in the block
        offsets[lo:hi] = offsets[lo - 1][None, :] + np.cumsum(prev * m, axis=0)  # c_k = A_{k-1} m_k + c_{k-1}
        # L*_k = b_k^2 tr(A_{k-1} Cov(X0|X_k) A_{k-1}^T)
        floors[lo:hi] = b**2 * np.einsum("ki,ki,ki->k", prev, prev, post_var)
        factors[lo:hi] = A
    return GaussianStagedCT(
        loc=loc, eigvals=lam, eigvecs=vecs, alphas=a, sigmas=s, factors=factors, offsets=offsets, loss_floors=floors
    )


def _stage_terms(lam: np.ndarray, mu: np.ndarray, a: np.ndarray, s: np.ndarray):
    r"""For the stages k = 2..len(a) of the grid piece (a, s), in the eigenbasis: the minimiser factors
    $M_k$, offsets $m_k = b_k s_k^2 C_k^{-1}\mu$, the posterior variances $\lambda s_k^2 / C_k$ of
    $\mathrm{Cov}(X_0 \mid X_k)$, and $b_k$."""
    b = (a[:-1] * s[1:] - a[1:] * s[:-1]) / s[1:]  # b_k = a_{k-1} - a_k s_{k-1}/s_k
    var = a[1:, None] ** 2 * lam[None, :] + s[1:, None] ** 2  # C_k
    inv = 1.0 / var
    M = (s[:-1, None] * s[1:, None] + (a[:-1] * a[1:])[:, None] * lam[None, :]) * inv
    scaled = s[1:, None] ** 2 * inv  # s_k^2 C_k^{-1}
    return M, (b[:, None] * scaled) * mu[None, :], lam[None, :] * scaled, b


def staged_ct_gaussian_w2(target: Gaussian, schedule: AbstractSchedule, times: ArrayLike | None = None) -> float:
    r"""Exact $W_2(f^\star_T(X_T), X_1)$ of staged consistency training with exact minimisers, for a Gaussian
    target on the schedule's stage grid (see `stage_grid`; `DiscreteVP` needs no `times`). Host-side float."""
    alphas, sigmas = stage_grid(schedule, times)
    return staged_ct_gaussian(target, alphas, sigmas).w2()
