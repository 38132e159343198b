"""Time grids of a discretisation with a traced number of points."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._custom_types import RealScalarLike
from .._misc import (
    as_float_array,
    check_fields,
    check_value,
    diff,
    finite,
    optional,
    positive_field,
    static_positive_float,
)
from .._schedules import AbstractSchedule, karras_noise_levels


def _check_grid_times(times: ArrayLike) -> Array:
    times = as_float_array(times, "times")
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"`times` must be a 1-D grid of at least 2 points, got shape {tuple(times.shape)}.")
    return check_value(times, lambda t: diff(t) > 0, "`times` must be strictly increasing", show=False)


class AbstractGrid(eqx.Module):
    r"""Times $t_0 < t_1 < \dots < t_{N-1}$ of a discretisation with (traced) $N$ points."""

    @abc.abstractmethod
    def noise(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        r"""Noise level $\sigma/\alpha$ of grid point `index` in an `num`-point grid."""

    @abc.abstractmethod
    def time(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        """Time of grid point `index` in an `num`-point grid."""


class KarrasGrid(AbstractGrid):
    r"""Karras et al.'s $\rho$-grid in noise level, $n_i = (n_{min}^{1/\rho} + \tfrac{i}{N-1}(n_{max}^{1/\rho} - n_{min}^{1/\rho}))^\rho$,
    mapped to the schedule's time. The ends default to the schedule's noise levels at `t_min` and
    `t_max` (then $t_0 = t_{min}$ and $t_{N-1} = t_{max}$ exactly); pass `noise_max` where the
    schedule's noise level at `t_max` is infinite."""

    noise_min: RealScalarLike | None = eqx.field(default=None, converter=optional(positive_field("noise_min")))
    noise_max: RealScalarLike | None = eqx.field(default=None, converter=optional(positive_field("noise_max")))
    rho: float = eqx.field(static=True, default=7.0, converter=static_positive_float("rho"))

    def __check_init__(self):
        if self.noise_min is not None and self.noise_max is not None:
            check_fields(
                self, ("noise_min", "noise_max"), lambda lo, hi: lo < hi, "KarrasGrid needs noise_min < noise_max"
            )

    def _ends(self, schedule: AbstractSchedule):
        lo = schedule.noise(schedule.t_min) if self.noise_min is None else jnp.asarray(self.noise_min)
        if self.noise_max is None:
            hi = check_value(
                schedule.noise(schedule.t_max),
                finite,
                f"{type(schedule).__name__} has infinite noise at t_max: give KarrasGrid a finite `noise_max`",
                show=False,
            )
        else:
            hi = jnp.asarray(self.noise_max)
        return lo, hi

    def noise(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        lo, hi = self._ends(schedule)
        dtype = jnp.result_type(float)
        frac = jnp.asarray(index).astype(dtype) / (jnp.asarray(num).astype(dtype) - 1)
        inv = 1.0 / self.rho
        return (lo**inv + frac * (hi**inv - lo**inv)) ** self.rho

    def time(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        index = jnp.asarray(index)
        t = jnp.clip(schedule.time_at_noise(self.noise(schedule, index, num)), schedule.t_min, schedule.t_max)
        # The inverse map rounds; the default ends are the schedule's ends exactly (the boundary
        # condition makes f(t_0, x) = x only at t_min itself).
        if self.noise_min is None:
            t = jnp.where(index == 0, schedule.t_min, t)
        if self.noise_max is None:
            t = jnp.where(index == jnp.asarray(num).astype(index.dtype) - 1, schedule.t_max, t)
        return t


class FixedGrid(AbstractGrid):
    """A fixed grid of times (Li, Huang and Wei's stages, or any user grid); use it with
    `ConstantCurriculum(len(times))`."""

    times: Array = eqx.field(converter=_check_grid_times)

    def noise(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        return schedule.noise(self.time(schedule, index, num))

    def time(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        return self.times[jnp.asarray(index)]


def karras_times(schedule: AbstractSchedule, num: int, rho: float = 7.0) -> Array:
    """The default `KarrasGrid` of the schedule as an array of `num` times (for inspection)."""
    levels = karras_noise_levels(schedule.noise(schedule.t_min), schedule.noise(schedule.t_max), num, rho)
    return jnp.clip(schedule.time_at_noise(levels), schedule.t_min, schedule.t_max)
