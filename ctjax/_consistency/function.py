"""A learned consistency function with an exact boundary condition."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._misc import as_float_array, check_instance, check_time
from .._nets import AbstractNetwork
from .._schedules import AbstractSchedule, TrigFlow
from .base import AbstractConsistencyModel
from .scalings import AbstractScalings, EDMScalings, TrigFlowScalings


def apply_scalings(
    scalings: AbstractScalings,
    schedule: AbstractSchedule,
    net: AbstractNetwork,
    t: ArrayLike,
    x: ArrayLike,
    key: PRNGKeyArray | None,
    *,
    check_traced: bool = True,
) -> Array:
    """$c_{skip} x + c_{out} F(c_{in} x, c_{noise})$, returning `x` itself (bit for bit) at `t_min`.

    `t` must lie in the schedule's range: checked at once when concrete and, unless `check_traced`
    is False (the staged models' own stage times), at run time when traced."""
    t = check_time(schedule, t, "t", traced=check_traced)
    x = as_float_array(x, "x")
    c_skip, c_out, c_in, c_noise = (jnp.asarray(c).astype(x.dtype) for c in scalings(schedule, t))
    out = c_skip * x + c_out * net(c_in * x, c_noise, key=key)
    # The boundary condition holds exactly, whatever the network or its parameters.
    return jnp.where(t <= schedule.t_min, x, out)


def _default_scalings(scalings: AbstractScalings | None) -> AbstractScalings:
    return EDMScalings() if scalings is None else scalings


class ConsistencyFunction(AbstractConsistencyModel):
    r"""$f_\theta(t, x) = c_{skip}(t) x + c_{out}(t) F_\theta(c_{in}(t) x, c_{noise}(t))$, with
    $f_\theta(t_{min}, x) = x$ exactly for any parameters.

    **Arguments:**

    - `net`: the network $F_\theta$ (an `AbstractNetwork` mapping `(dim,)` to `(dim,)`).
    - `schedule`: the interpolant.
    - `scalings`: `EDMScalings(sigma_data)` (default, any schedule) or `TrigFlowScalings`.
    """

    net: AbstractNetwork
    schedule: AbstractSchedule
    scalings: AbstractScalings = eqx.field(default=None, converter=_default_scalings)

    def __check_init__(self):
        check_instance(self.net, AbstractNetwork, "net", "a ctjax network (an AbstractNetwork such as MLP)")
        check_instance(self.schedule, AbstractSchedule, "schedule", "a ctjax schedule")
        check_instance(self.scalings, AbstractScalings, "scalings", "EDMScalings or TrigFlowScalings")
        if isinstance(self.scalings, TrigFlowScalings) and not isinstance(self.schedule, TrigFlow):
            raise TypeError("TrigFlowScalings needs a TrigFlow schedule; use EDMScalings for other schedules.")

    @property
    def dim(self) -> int:
        return self.net.dim

    def __call__(self, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None) -> Float[Array, " dim"]:
        return apply_scalings(self.scalings, self.schedule, self.net, t, x, key)

    def trainable(self) -> PyTree[bool]:
        spec = jtu.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.net, spec, replace=jtu.tree_map(eqx.is_inexact_array, self.net))
