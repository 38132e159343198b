r"""Learned flow maps against the exact $\Phi_{s \to t}$, over a grid of $(s, t)$."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from ._evaluation import marginal_draw
from ._flow_maps import AbstractFlowMap, ExactFlowMap
from ._misc import as_float_array, check_instance, check_time
from ._targets import AbstractTarget


@eqx.filter_jit
def _error_at(model, exact, target, s, t, num_points: int, batch_size: int, key):
    xs = marginal_draw(target, model.schedule, s, num_points, key)
    pred, true = jax.lax.map(lambda x: (model(s, t, x), exact(s, t, x)), xs, batch_size=batch_size)
    return jnp.sqrt(jnp.mean(jnp.sum((pred - true) ** 2, axis=-1)))


@eqx.filter_jit
def _defect_at(model, target, s, u, t, num_points: int, batch_size: int, key):
    xs = marginal_draw(target, model.schedule, s, num_points, key)

    def both(x):
        return model(s, t, x), model(u, t, model(s, u, x))

    direct, composed = jax.lax.map(both, xs, batch_size=batch_size)
    return jnp.sqrt(jnp.mean(jnp.sum((direct - composed) ** 2, axis=-1)))


def _check(model, target, times):
    check_instance(model, AbstractFlowMap, "model", "a flow map (FlowMap or ExactFlowMap)")
    check_instance(target, AbstractTarget, "target", "a ctjax target")
    if target.dim != model.dim:
        raise ValueError(f"`target` has dimension {target.dim} but the flow map acts on dimension {model.dim}.")
    times = as_float_array(times, "times")
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"`times` must be a 1-D array of at least 2 times, got shape {times.shape}.")
    for t in times:
        check_time(model.schedule, t, "times")
    return times


def flow_map_error(
    model: AbstractFlowMap,
    target: AbstractTarget,
    times: ArrayLike,
    *,
    num_points: int = 1000,
    batch_size: int = 256,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    key: PRNGKeyArray,
) -> np.ndarray:
    r"""RMS distance between the learned jump and the exact one,
    $E_{ij} = \sqrt{E\|X_\theta(s_i, t_j, X_{s_i}) - \Phi_{s_i \to t_j}(X_{s_i})\|^2}$ with $X_{s_i}$ drawn from
    the true marginal at $s_i$, for every pair of `times` with $s_i > t_j$ (noise towards data). The
    exact map is the Gaussian closed form or a Diffrax solve at `rtol`, `atol`.

    **Returns:** a `(len(times), len(times))` NumPy array, row $s$, column $t$; NaN where $s_i \le t_j$.
    The column of `t_min` is `map_error` of the consistency slice.
    """
    times = _check(model, target, times)
    exact = ExactFlowMap(target, model.schedule, rtol=rtol, atol=atol)
    n = times.shape[0]
    out = np.full((n, n), np.nan)
    keys = jr.split(key, n)
    for i in range(n):
        for j in range(n):
            if float(times[i]) > float(times[j]):
                out[i, j] = float(
                    _error_at(model, exact, target, times[i], times[j], int(num_points), int(batch_size), keys[i])
                )
    return out


def semigroup_defect(
    model: AbstractFlowMap,
    target: AbstractTarget,
    times: ArrayLike,
    *,
    num_points: int = 1000,
    batch_size: int = 256,
    key: PRNGKeyArray,
) -> np.ndarray:
    r"""How far a flow map is from a flow: the RMS of $X(s, t, x) - X(u, t, X(s, u, x))$ for $x$ from the
    true marginal at $s$, for every pair $s_i > t_j$ of `times`, averaged (in mean square) over the
    grid times $u$ strictly between them. Zero for the exact flow (the semigroup law
    $\Phi_{u \to t} \circ \Phi_{s \to u} = \Phi_{s \to t}$); a learned map can be accurate at the pairs it was
    trained on and still fail it.

    **Returns:** a `(len(times), len(times))` NumPy array; NaN where no grid time lies between.
    """
    times = _check(model, target, times)
    n = times.shape[0]
    values = [float(v) for v in times]
    out = np.full((n, n), np.nan)
    keys = jr.split(key, n)
    for i in range(n):
        for j in range(n):
            between = [k for k in range(n) if min(values[i], values[j]) < values[k] < max(values[i], values[j])]
            if values[i] > values[j] and between:
                sq = [
                    float(
                        _defect_at(
                            model, target, times[i], times[k], times[j], int(num_points), int(batch_size), keys[i]
                        )
                    )
                    ** 2
                    for k in between
                ]
                out[i, j] = float(np.sqrt(np.mean(sq)))
    return out
