r"""The interface of a flow map $X(s, t, x) \approx \Phi_{s \to t}(x)$, the two-time generalisation
of a consistency model."""

import abc
from typing import ClassVar, TYPE_CHECKING

import equinox as eqx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._schedules import AbstractSchedule


class AbstractFlowMap(eqx.Module):
    r"""A map $X(s, t, x)$ from a point $x$ at time $s$ to its probability-flow trajectory at time
    $t$, $X(s, t, x) \approx \Phi_{s \to t}(x)$, with the boundary $X(s, s, x) = x$ exactly.

    It is written through the average velocity $u(s, t, x) = (X(s, t, x) - x)/(t - s)$, as
    $X(s, t, x) = x + (t - s)\, u(s, t, x)$; on the diagonal $u(t, t, x)$ is the instantaneous
    velocity $dx/dt$. A consistency model is the slice $X(t, t_{min}, \cdot)$ (`ConsistencySlice`).

    Acts on one point `x` of shape `(dim,)` at scalar times `s`, `t` in the schedule's range;
    `key` drives the network's randomness (dropout); `key=None` is deterministic.
    """

    if TYPE_CHECKING:
        schedule: ClassVar[AbstractSchedule]
        dim: ClassVar[int]
    else:
        schedule: eqx.AbstractVar[AbstractSchedule]
        dim: eqx.AbstractVar[int]
        """Dimension of the data."""

    @abc.abstractmethod
    def average_velocity(
        self, s: ArrayLike, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        r"""$u(s, t, x)$; at $s = t$ the velocity $dx/dt$ at $(t, x)$. Unchecked times (the trainers
        differentiate it in $s$ and $t$); `__call__` checks them."""

    @abc.abstractmethod
    def __call__(
        self, s: ArrayLike, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        """$X(s, t, x)$."""

    @abc.abstractmethod
    def trainable(self) -> PyTree[bool]:
        """Which leaves are trained: none for an exact map, the network's floating arrays for a learned one."""
