r"""The training draw of the flow-map trainers: pairs of times, noised points and their velocities."""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._flow_maps import AbstractFlowMap
from .._misc import check_instance, static_float_in
from .._schedules import AbstractSchedule
from ._time_sampling import lognormal_times
from ._velocity_estimate import check_velocity_estimate, OneSample


def time_pairs(
    key: PRNGKeyArray, num: int, schedule: AbstractSchedule, p_mean: float, p_std: float, ratio: float, dtype
) -> tuple[Array, Array]:
    r"""MeanFlow's time pairs $(s, t)$, $s \ge t$: two independent draws with log-normal noise level
    (`lognormal_times`; on `LinearInterpolant`, MeanFlow's logit-normal $t$), $s$ the later one and $t$
    the earlier; then $t = s$ for all but a fraction `ratio` of the pairs (the diagonal: the
    instantaneous velocity)."""
    k_times, k_keep = jr.split(key)
    pair = lognormal_times(k_times, (2, num), schedule, p_mean, p_std, dtype)
    s, t = jnp.max(pair, axis=0), jnp.min(pair, axis=0)
    off_diagonal = jr.uniform(k_keep, (num,)) < ratio
    return s, jnp.where(off_diagonal, t, s)


def conditional_velocity(schedule: AbstractSchedule, s: Array, x0: Array, noise: Array) -> tuple[Array, Array]:
    r"""$(x_s, v)$ with $x_s = \alpha(s) x_0 + \sigma(s) z$ and the conditional velocity
    $v = \dot\alpha(s) x_0 + \dot\sigma(s) z$ (per example)."""
    a, sig, da, dsig = (c.astype(x0.dtype) for c in schedule.coefficients(s))
    return a * x0 + sig * noise, da * x0 + dsig * noise


def flow_map_draw(
    model: AbstractFlowMap,
    batch: Array,
    key: PRNGKeyArray,
    *,
    p_mean: float,
    p_std: float,
    ratio: float,
    velocity: Any = None,
    velocity_estimate: Any = None,
    coupling: Any = None,
) -> tuple[Array, Array, Array, Array, PRNGKeyArray]:
    r"""One batch of `(s, t, x_s, v, drop_keys)`: `time_pairs`, points on the interpolant, and the
    velocity at $(s, x_s)$: a teacher's `velocity(s, x_s)`, or without one the conditional velocity of
    the pair $(x_0, z)$ or of a `velocity_estimate`'s $(\hat x_0, \hat z)$ (under stop-gradient;
    `OneSample()`, like None, keeps the pair's own)."""
    schedule, dtype, num = model.schedule, batch.dtype, batch.shape[0]
    k_time, k_noise, k_drop, k_est = jr.split(key, 4)
    s, t = time_pairs(k_time, num, schedule, p_mean, p_std, ratio, dtype)
    noise = jr.normal(k_noise, batch.shape, dtype)
    if coupling is not None:
        noise = coupling.pair(batch, noise)
    x_s, v = jax.vmap(conditional_velocity, in_axes=(None, 0, 0, 0))(schedule, s, batch, noise)
    if velocity is not None:
        v = jax.vmap(velocity)(s, x_s).astype(dtype)
    elif velocity_estimate is not None and not isinstance(velocity_estimate, OneSample):
        x0_hat, noise_hat = velocity_estimate.estimate(schedule, s, x_s, batch, noise, key=k_est)
        v = jax.vmap(conditional_velocity, in_axes=(None, 0, 0, 0))(schedule, s, x0_hat, noise_hat)[1]
    return s, t, x_s, jax.lax.stop_gradient(v), jr.split(k_drop, num)


def non_negative_float(name: str):
    """A converter for a static, non-negative, finite float field."""
    return static_float_in(name, 0.0, float(np.finfo(np.float64).max), "non-negative and finite")


def check_weighting(power: float, eps: float) -> None:
    r"""A ValueError where the adaptive weight $1/(\lVert\Delta\rVert^2 + c)^p$ could divide by zero (a residual
    that is exactly 0, as at a fresh flow map, with $c = 0$ and $p > 0$)."""
    if power > 0 and eps == 0:
        raise ValueError(
            "`weighting_eps` must be positive when `weighting_power` is: a residual of exactly 0 (a fresh flow "
            "map's) would get an infinite weight; use weighting_eps=1e-3 (MeanFlow's), or weighting_power=0."
        )


def check_estimate(velocity: Any, estimate: Any) -> None:
    """A TypeError unless `estimate` is a velocity estimate; a ValueError for one other than `OneSample`
    beside a teacher `velocity` (the estimate replaces the teacher in training without one)."""
    check_velocity_estimate(estimate)
    if velocity is not None and not isinstance(estimate, OneSample):
        raise ValueError(
            "`velocity_estimate` replaces the teacher; with a teacher `velocity` use OneSample(), "
            "or velocity=None to train without one."
        )


def check_flow_map_model(model: Any, velocity: Any = None) -> AbstractFlowMap:
    """`model`, or a TypeError unless it is a flow map; a ValueError where a teacher `velocity` visibly
    belongs to another schedule (an `ExactVelocity` whose schedule differs from the model's)."""
    check_instance(model, AbstractFlowMap, "model", "a flow map (FlowMap(TwoTimeMLP(...), schedule))")
    schedule = getattr(velocity, "schedule", None)
    if isinstance(schedule, AbstractSchedule) and schedule != model.schedule:
        raise ValueError(
            f"The teacher velocity is for {schedule}, the flow map for {model.schedule}: "
            "build both on the same schedule (their times would mean different noise levels)."
        )
    return model
