"""Time proposals: times whose noise level is log-normal (EDM, ECT, sCM)."""

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray

from .._custom_types import DTypeLike
from .._schedules import AbstractSchedule


def lognormal_times(
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    schedule: AbstractSchedule,
    p_mean: float,
    p_std: float,
    dtype: DTypeLike | None = None,
) -> Array:
    r"""Times whose noise level $\sigma(t)/\alpha(t)$ is log-normal, $\log n \sim N(P_{mean}, P_{std}^2)$,
    clipped to the schedule's range: EDM's and ECT's proposal on the variance-exploding schedule
    ($t = n$), sCM's $t = \arctan(n/\sigma_d)$ on TrigFlow."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    log_noise = p_mean + p_std * jr.normal(key, shape, dtype)
    return jnp.vectorize(schedule.time_at_log_noise)(log_noise).astype(dtype)
