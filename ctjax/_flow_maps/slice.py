r"""The consistency model inside a flow map: $f(t, x) = X(t, t_{min}, x)$."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._consistency import AbstractConsistencyModel
from .._misc import as_float_array, check_instance
from .._schedules import AbstractSchedule
from .base import AbstractFlowMap


class ConsistencySlice(AbstractConsistencyModel):
    r"""$f(t, x) = X(t, t_{min}, x)$: the flow map's jump to the data end, a consistency model, so that
    every metric and sampler of consistency models (`map_error`, `sample`'s re-noising chain, the
    CLI's evaluation) takes a flow map. $f(t_{min}, x) = x$ holds because $X(s, s, x) = x$."""

    flow_map: AbstractFlowMap

    def __check_init__(self):
        check_instance(self.flow_map, AbstractFlowMap, "flow_map", "a flow map (FlowMap or ExactFlowMap)")

    @property
    def schedule(self) -> AbstractSchedule:  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.flow_map.schedule

    @property
    def dim(self) -> int:  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.flow_map.dim

    def __call__(self, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None) -> Float[Array, " dim"]:
        t = as_float_array(t, "t")
        return self.flow_map(t, jnp.asarray(self.flow_map.schedule.t_min, t.dtype), x, key=key)

    def trainable(self) -> PyTree[bool]:
        spec = jtu.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.flow_map, spec, replace=self.flow_map.trainable())
