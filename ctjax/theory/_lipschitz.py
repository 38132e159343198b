"""Lipschitz constants: exact for Gaussian flow maps, estimated for any map (theory.md 1.5, 7.3, 8.10)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._consistency import StagedConsistencyModel
from .._misc import as_float_array, check_finite, check_time, validate_int
from .._schedules import AbstractSchedule
from .._targets import AbstractTarget, Gaussian
from ._gaussian_oracle import host_eigh


def gaussian_flow_map_lipschitz(
    target: Gaussian, schedule: AbstractSchedule, t_from: ArrayLike, t_to: ArrayLike
) -> float:
    r"""The exact Lipschitz constant of the probability-flow map $\Phi_{t \to u}$ of $N(\mu, \Sigma)$ data
    (theory.md 7.3): the map is affine with linear part $C_u^{1/2} C_t^{-1/2}$, diagonal in the eigenbasis of
    $\Sigma$, so its constant is $\max_i \rho_i$,
    $\rho_i = \sqrt{(\alpha_u^2\lambda_i + \sigma_u^2)/(\alpha_t^2\lambda_i + \sigma_t^2)}$.

    **Arguments:**

    - `target`: a `Gaussian`.
    - `schedule`: any ctjax schedule.
    - `t_from`, `t_to`: scalar times $t$ and $u$ in `[t_min, t_max]` (either order).

    Host-side float64; returns a Python float. For the constant over a whole stage grid (Assumption 1) see
    `gaussian_flow_lipschitz`.
    """
    what = "gaussian_flow_map_lipschitz"
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(f"`schedule` must be a ctjax schedule, got {type(schedule).__name__}.")
    lam, _ = host_eigh(target, what)
    t = check_time(schedule, t_from, "t_from")
    u = check_time(schedule, t_to, "t_to")
    a_t, s_t, a_u, s_u = (float(np.asarray(c, dtype=np.float64)) for c in _coefficients(schedule, t, u))
    rho = np.sqrt((a_u**2 * lam + s_u**2) / (a_t**2 * lam + s_t**2))
    return float(np.max(rho))


def _coefficients(schedule, t, u):
    return schedule.alpha(t), schedule.sigma(t), schedule.alpha(u), schedule.sigma(u)


def _top_singular_value(fn: Callable, x: Array, key: PRNGKeyArray, num_iterations: int) -> Array:
    r"""$\|J_{fn}(x)\|_2$ by power iteration on $J^\top J$: one linearisation of `fn` at `x` (one evaluation;
    its transpose is the VJP), then one JVP and one VJP per iteration; $J$ is never formed."""
    _, jvp_fn = jax.linearize(fn, x)
    vjp_fn = jax.linear_transpose(jvp_fn, x)

    def normalise(v):
        norm = jnp.linalg.norm(v)
        return v / jnp.where(norm > 0, norm, jnp.ones_like(norm))

    def body(_, v):
        return normalise(vjp_fn(jvp_fn(v))[0])

    v = jax.lax.fori_loop(0, num_iterations, body, normalise(jr.normal(key, x.shape, x.dtype)))
    return jnp.linalg.norm(jvp_fn(v))


@eqx.filter_jit
def _spectral_norms(fn, points, keys, num_iterations: int):
    return jax.vmap(lambda x, k: _top_singular_value(fn, x, k, num_iterations))(points, keys)


def _check_estimate_args(fn, points, num_iterations) -> tuple[Array, int]:
    if not callable(fn):
        raise TypeError(
            f"`fn` must be a callable mapping one point of shape (dim,) to a vector, got {type(fn).__name__}."
        )
    points = as_float_array(points, "points")
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(
            f"`points` must be a non-empty (n, dim) array of points, got shape {tuple(points.shape)}; "
            "wrap a single point as points[None]."
        )
    points = check_finite(points, "points")
    num_iterations = validate_int(num_iterations, "num_iterations", 1)
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(points.shape[1:], points.dtype))
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 1:
        raise ValueError(
            "`fn` must map one point of shape (dim,) to one vector of shape (m,) (per example; it is vmapped "
            f"over `points`), got output {out}."
        )
    return points, int(num_iterations)


def jacobian_spectral_norms(
    fn: Callable[[Array], Array], points: ArrayLike, *, num_iterations: int = 20, key: PRNGKeyArray
) -> Float[Array, " n"]:
    r"""The spectral norm $\|J_{fn}(x)\|_2$ of the Jacobian of `fn` at each of the `points`, by power
    iteration on $J^\top J$ with `jax.linearize` (JVPs) and `jax.vjp`, never forming $J$.

    After $m$ iterations from a random start the relative error is of order $(s_2/s_1)^{4m}$, with $s_1 > s_2$
    the two largest singular values; the estimate never exceeds the true norm (up to rounding).

    **Arguments:**

    - `fn`: a map from one point of shape `(dim,)` to a vector, differentiable in forward and reverse mode:
      `lambda x: ctjax.flow_map(target, schedule, x, t, u)`, a learned consistency function
      `lambda x: model(t, x)`, a stage function `lambda x: model.stage(index, x)`.
    - `points`: shape `(n, dim)`; vmapped over.
    - `num_iterations`: power iterations per point.
    - `key`: the random starting vectors (one per point).

    Compiled once per `fn` (a new lambda compiles again). Cost per point: one evaluation of `fn` and
    `num_iterations` JVP-VJP pairs of its linearisation.
    """
    points, num_iterations = _check_estimate_args(fn, points, num_iterations)
    return _spectral_norms(fn, points, jr.split(key, points.shape[0]), num_iterations)


def lipschitz_estimate(
    fn: Callable[[Array], Array], points: ArrayLike, *, num_iterations: int = 20, key: PRNGKeyArray
) -> float:
    r"""A lower estimate of the Lipschitz constant of `fn`: the largest Jacobian spectral norm
    $\max_j \|J_{fn}(x_j)\|_2$ over the sample `points` (see `jacobian_spectral_norms`, which it maximises).

    For an affine map (a Gaussian flow map) every point gives the constant itself; otherwise it is a lower
    bound on $\sup_x \|J_{fn}(x)\|_2$ that grows with the sample. Host-side: returns a Python float.

    **Arguments:** as `jacobian_spectral_norms`.
    """
    norms = np.asarray(jacobian_spectral_norms(fn, points, num_iterations=num_iterations, key=key))
    if not np.all(np.isfinite(norms)):
        raise ValueError("`fn` has a non-finite Jacobian at some of the `points`; check `fn` and `points`.")
    return float(np.max(norms))


@eqx.filter_jit
def _stage_norms(model: StagedConsistencyModel, index, x0, z, keys, num_iterations: int):
    points = model.schedule.interpolate(model.times[index], x0, z)
    fn = lambda x: model.stage(index, x)
    return jax.vmap(lambda x, k: _top_singular_value(fn, x, k, num_iterations))(points, keys)


def staged_lipschitz(
    model: StagedConsistencyModel,
    target: AbstractTarget,
    *,
    num_points: int,
    num_iterations: int = 20,
    key: PRNGKeyArray,
) -> Float[np.ndarray, " T"]:
    """For every stage $k = 1..T$ of a staged model, the largest Jacobian spectral norm of the stage function
    $f_k$ over `num_points` samples of the forward marginal $X_k = a_k X_0 + s_k Z$ (`lipschitz_estimate`
    per stage). Row 0 is stage 1, the identity (1).

    One compiled function, with the stage index traced, serves every stage. Host-side: returns a float64
    NumPy array of shape `(T,)`.
    """
    if not isinstance(model, StagedConsistencyModel):
        raise TypeError(f"`model` must be a StagedConsistencyModel, got {type(model).__name__}.")
    if not isinstance(target, AbstractTarget):
        raise TypeError(f"`target` must be a ctjax target, got {type(target).__name__}.")
    num_points = validate_int(num_points, "num_points", 1)
    num_iterations = validate_int(num_iterations, "num_iterations", 1)
    maxima = []
    for index in range(1, model.num_stages):
        k_x, k_z, k_v = jr.split(jr.fold_in(key, index), 3)
        x0 = target.sample(k_x, int(num_points))
        z = jr.normal(k_z, x0.shape, x0.dtype)
        norms = _stage_norms(model, jnp.asarray(index), x0, z, jr.split(k_v, int(num_points)), int(num_iterations))
        maxima.append(jnp.max(norms))  # stays on the device: one transfer at the end, not one per stage
    rest = np.asarray(jnp.stack(maxima), dtype=np.float64) if maxima else np.zeros(0)
    return np.concatenate([np.ones(1), rest])  # stage 1 is the identity
