"""One-step and multistep sampling from a consistency model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._consistency import AbstractConsistencyModel
from ._custom_types import DTypeLike
from ._flow_maps import AbstractFlowMap
from ._misc import as_float_array, check_value, diff, is_concrete


def _check_times(model: AbstractConsistencyModel | AbstractFlowMap, times: ArrayLike | None) -> Array:
    schedule = model.schedule
    if times is None:
        return jnp.asarray([schedule.t_max], dtype=jnp.result_type(float))
    times = as_float_array(times, "times")
    if times.ndim != 1 or times.shape[0] < 1:
        raise ValueError(f"`times` must be a non-empty 1-D sequence of times, got shape {times.shape}.")
    if is_concrete((schedule.t_min, schedule.t_max)):
        where = f" = ({float(schedule.t_min):g}, {float(schedule.t_max):g}]"
    else:
        where = ""
    times = check_value(
        times, lambda t: (t > schedule.t_min) & (t <= schedule.t_max), f"`times` must lie in (t_min, t_max]{where}"
    )
    return check_value(times, lambda t: diff(t) < 0, "`times` must be strictly decreasing (noise to data)")


@eqx.filter_jit
def _sample(model, times, num: int, key, dtype):
    schedule = model.schedule
    keys = jr.split(key, times.shape[0])
    t0 = times[0].astype(dtype)
    x = schedule.sigma(t0).astype(dtype) * jr.normal(keys[0], (num, model.dim), dtype)
    x = jax.vmap(model, in_axes=(None, 0))(t0, x)
    a_min = jnp.asarray(schedule.alpha(schedule.t_min), dtype)
    s_min = jnp.asarray(schedule.sigma(schedule.t_min), dtype)
    for j in range(1, times.shape[0]):
        t = times[j].astype(dtype)
        a, s = schedule.alpha(t).astype(dtype), schedule.sigma(t).astype(dtype)
        # x ~ a_min x0 + s_min z; rescale the signal to a x0 and top the noise up to s.
        extra = jnp.sqrt(jnp.maximum(s**2 - (a * s_min / a_min) ** 2, 0.0))
        x = a / a_min * x + extra * jr.normal(keys[j], x.shape, dtype)
        x = jax.vmap(model, in_axes=(None, 0))(t, x)
    return x


@eqx.filter_jit
def _sample_flow_map(flow_map, times, num: int, key, dtype):
    schedule = flow_map.schedule
    t0 = times[0].astype(dtype)
    x = schedule.sigma(t0).astype(dtype) * jr.normal(key, (num, flow_map.dim), dtype)
    ends = jnp.concatenate([times[1:], jnp.asarray([schedule.t_min], times.dtype)]).astype(dtype)
    starts = times.astype(dtype)
    for j in range(times.shape[0]):
        x = jax.vmap(flow_map, in_axes=(None, None, 0))(starts[j], ends[j], x)
    return x


def sample(
    model: AbstractConsistencyModel | AbstractFlowMap,
    num: int,
    *,
    times: ArrayLike | None = None,
    dtype: DTypeLike | None = None,
    key: PRNGKeyArray,
) -> Float[Array, "num dim"]:
    r"""Draw `num` samples with one step or several (Song et al.'s Algorithm 1, seed 003's sequence).

    Start from $x = \sigma(\tau_0) z$ and set $x \leftarrow f(\tau_0, x)$; then for each further time
    $\tau$: $x \leftarrow f(\tau,\ \tfrac{\alpha(\tau)}{\alpha_{min}} x + \sqrt{\sigma(\tau)^2 - (\alpha(\tau)\sigma_{min}/\alpha_{min})^2}\, z)$,
    which puts $x$ back on the marginal at $\tau$ if $f$ is exact.

    A flow map $X(s, t, x)$ (`AbstractFlowMap`) is sampled as a deterministic chain, with no re-noising:
    $x = \sigma(\tau_0) z$, then $x \leftarrow X(\tau_k, \tau_{k+1}, x)$ along the times and a last jump
    to $t_{min}$; for the exact flow map every grid gives the same sample.

    **Arguments:**

    - `model`: a consistency model (learned, staged or exact) or a flow map.
    - `num`: number of samples.
    - `times`: strictly decreasing times $\tau_0 > \tau_1 > \dots$ in $(t_{min}, t_{max}]$; default
      `(t_max,)`, one step.
    - `dtype`: floating dtype of the samples (default: JAX's default float).
    - `key`: PRNG key.
    """
    times = _check_times(model, times)
    if int(num) < 1:
        raise ValueError(f"`num` must be at least 1, got {num}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    try:
        floating = jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(f"`dtype` must be a floating dtype such as jnp.float32, got {dtype!r}.")
    if isinstance(model, AbstractFlowMap):
        return _sample_flow_map(model, times, int(num), key, dtype)
    return _sample(model, times, int(num), key, dtype)
