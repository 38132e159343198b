"""The exact consistency function of an analytic target."""

import equinox as eqx
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._flow import flow_map, gaussian_flow_map
from .._schedules import AbstractSchedule
from .._targets import AbstractTarget, Gaussian
from .base import AbstractConsistencyModel


class ExactConsistencyFunction(AbstractConsistencyModel):
    r"""$f^\star(t, x) = \Phi_{t \to t_{min}}(x)$, the consistency function that every method
    approximates: closed form for a `Gaussian` target, Diffrax otherwise.

    Use it as ground truth, as a perfect teacher, or to check that a loss vanishes at the optimum.
    """

    target: AbstractTarget
    schedule: AbstractSchedule
    rtol: float = eqx.field(static=True, default=1e-8)
    atol: float = eqx.field(static=True, default=1e-8)

    def __init__(self, target: AbstractTarget, schedule: AbstractSchedule, rtol: float = 1e-8, atol: float = 1e-8):
        self.target = target
        self.schedule = schedule
        self.rtol = rtol
        self.atol = atol

    @property
    def dim(self) -> int:
        return self.target.dim

    def trainable(self) -> PyTree[bool]:
        return jtu.tree_map(lambda _: False, self)

    def __call__(self, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None) -> Float[Array, " dim"]:
        del key
        if isinstance(self.target, Gaussian):
            return gaussian_flow_map(self.target, self.schedule, x, t, self.schedule.t_min)
        return flow_map(self.target, self.schedule, x, t, self.schedule.t_min, rtol=self.rtol, atol=self.atol)
