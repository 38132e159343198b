"""Learned maps against the exact flow."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from ._consistency import AbstractConsistencyModel, ExactConsistencyFunction
from ._flow_maps import AbstractFlowMap, ConsistencySlice
from ._misc import as_float_array
from ._targets import AbstractTarget


def marginal_draw(target, schedule, t, num_points: int, key):
    """`num_points` draws of $X_t = \alpha(t) x_0 + \\sigma(t) z$ from the true marginal at `t`."""
    k_data, k_noise = jr.split(key)
    x0 = target.sample(k_data, num_points)
    return schedule.interpolate(t, x0, jr.normal(k_noise, x0.shape, x0.dtype))


def _map_error_at(model, exact, target, t, num_points: int, batch_size: int, key):
    xt = marginal_draw(target, model.schedule, t, num_points, key)

    def both(x):
        return model(t, x), exact(t, x)

    pred, true = jax.lax.map(both, xt, batch_size=batch_size)
    return jnp.sqrt(jnp.mean(jnp.sum((pred - true) ** 2, axis=-1)))


_map_error_jit = eqx.filter_jit(_map_error_at)


def map_error(
    model: AbstractConsistencyModel | AbstractFlowMap,
    target: AbstractTarget,
    times: ArrayLike,
    *,
    num_points: int = 1000,
    batch_size: int = 256,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    key: PRNGKeyArray,
) -> np.ndarray:
    r"""RMS distance between the learned $f(t, x)$ and the exact $\Phi_{t \to t_{min}}(x)$,
    $\sqrt{E\|f(t, X_t) - \Phi_{t \to t_{min}}(X_t)\|^2}$ with $X_t$ drawn from the true marginal
    at $t$ ($\alpha x_0 + \sigma z$), for each `t` in `times`. A flow map is measured through its
    slice $X(t, t_{min}, \cdot)$; `flow_map_error` measures every other jump. The exact map is the Gaussian closed
    form or a Diffrax solve at tolerances `rtol`, `atol`.

    **Returns:** a NumPy array with one RMS error per time.
    """
    if isinstance(model, AbstractFlowMap):
        model = ConsistencySlice(model)
    times = as_float_array(times, "times")
    if times.ndim != 1:
        raise ValueError(f"`times` must be a 1-D array of times, got shape {times.shape}.")
    exact = ExactConsistencyFunction(target, model.schedule, rtol=rtol, atol=atol)
    keys = jr.split(key, times.shape[0])
    return np.array(
        [
            float(_map_error_jit(model, exact, target, t, int(num_points), int(batch_size), k))
            for t, k in zip(times, keys)
        ]
    )
