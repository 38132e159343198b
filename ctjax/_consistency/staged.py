"""Li, Huang and Wei's staged consistency functions f_1 = id, f_2, ..., f_T."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from .._misc import as_float_array, check_value, diff
from .._nets import AbstractNetwork
from .._schedules import AbstractSchedule, DiscreteVP
from .base import AbstractConsistencyModel
from .function import apply_scalings
from .scalings import AbstractScalings, EDMScalings


def stage_times_of(schedule: AbstractSchedule, times: ArrayLike | None) -> Array:
    """The stage grid: `schedule.stage_times()` for `DiscreteVP`, else `times` (increasing, first = t_min)."""
    if times is None:
        if isinstance(schedule, DiscreteVP):
            return schedule.stage_times()
        raise ValueError(f"`times` is required for {type(schedule).__name__}: pass the stage grid t_1 < ... < t_T.")
    times = as_float_array(times, "times")
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"`times` must be a 1-D grid of at least 2 stages, got shape {times.shape}.")
    times = check_value(times, lambda t: diff(t) > 0, "`times` must be strictly increasing", show=False)
    return check_value(
        times,
        lambda t: (t[0] == schedule.t_min) & (t[-1] <= schedule.t_max),
        f"`times` must start at t_min (stage 1 is the identity) and end at most at t_max of {type(schedule).__name__}",
        show=False,
    )


class StagedConsistencyModel(AbstractConsistencyModel):
    r"""The stage functions $f_k(x) = c_{skip}(t_k) x + c_{out}(t_k) F_{\theta_k}(c_{in}(t_k) x, c_{noise}(t_k))$,
    $k = 1..T$, each with its own network; the networks' parameters are stacked on a leading stage
    axis. $f_1$ is the identity ($t_1 = t_{min}$).

    Build with `StagedConsistencyModel.init(make_net, schedule, times=None, *, key)`.
    """

    nets: AbstractNetwork
    schedule: AbstractSchedule
    times: Float[Array, " T"]
    scalings: AbstractScalings

    def __init__(
        self,
        nets: AbstractNetwork,
        schedule: AbstractSchedule,
        times: ArrayLike,
        scalings: AbstractScalings | None = None,
    ):
        self.nets = nets
        self.schedule = schedule
        self.times = stage_times_of(schedule, times)
        self.scalings = EDMScalings() if scalings is None else scalings

    @classmethod
    def init(
        cls,
        make_net: Callable[[PRNGKeyArray], AbstractNetwork],
        schedule: AbstractSchedule,
        times: ArrayLike | None = None,
        scalings: AbstractScalings | None = None,
        *,
        key: PRNGKeyArray,
    ) -> "StagedConsistencyModel":
        """One network per stage from `make_net(key)`, stacked with `eqx.filter_vmap`."""
        grid = stage_times_of(schedule, times)
        nets = eqx.filter_vmap(make_net)(jr.split(key, grid.shape[0]))
        return cls(nets, schedule, grid, scalings)

    @property
    def dim(self) -> int:
        return self.nets.dim

    @property
    def num_stages(self) -> int:
        return self.times.shape[0]

    def stage_net(self, index: Int[ArrayLike, ""]) -> AbstractNetwork:
        """The network of the stage with 0-based `index` (may be traced)."""
        return jtu.tree_map(lambda a: a[index] if eqx.is_array(a) else a, self.nets)

    def stage(
        self, index: Int[ArrayLike, ""], x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        """$f_k(x)$ for the stage with 0-based `index` ($k$ = `index` + 1)."""
        return apply_scalings(
            self.scalings, self.schedule, self.stage_net(index), self.times[index], x, key, check_traced=False
        )

    def stage_index(self, t: ArrayLike) -> Array:
        """The 0-based index of the stage whose time is nearest to `t`."""
        return jnp.argmin(jnp.abs(self.times - jnp.asarray(t, self.times.dtype)))

    def __call__(self, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None) -> Float[Array, " dim"]:
        """$f_k(x)$ for the stage at time `t` (rounded to the nearest stage time)."""
        return self.stage(self.stage_index(t), x, key=key)

    def trainable(self) -> PyTree[bool]:
        spec = jtu.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.nets, spec, replace=jtu.tree_map(eqx.is_inexact_array, self.nets))
