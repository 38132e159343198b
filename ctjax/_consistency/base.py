"""The interface of a consistency model f(t, x) ~ Phi_{t -> t_min}(x)."""

import abc
from typing import ClassVar, TYPE_CHECKING

import equinox as eqx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._schedules import AbstractSchedule


class AbstractConsistencyModel(eqx.Module):
    r"""A map $f(t, x)$ from a point $x$ at time $t$ to the data end of its probability-flow
    trajectory, $f(t, x) \approx \Phi_{t \to t_{min}}(x)$, with $f(t_{min}, x) = x$.

    Acts on one point `x` of shape `(dim,)` at scalar `t`; `key` drives the network's randomness
    (dropout) and is shared by student and teacher evaluations. `key=None` is deterministic.
    """

    if TYPE_CHECKING:  # an AbstractVar would be a constructor argument to type checkers
        schedule: ClassVar[AbstractSchedule]
        dim: ClassVar[int]
    else:
        schedule: eqx.AbstractVar[AbstractSchedule]
        dim: eqx.AbstractVar[int]
        """Dimension of the data."""

    @abc.abstractmethod
    def __call__(self, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None) -> Float[Array, " dim"]:
        """$f(t, x)$."""

    @abc.abstractmethod
    def trainable(self) -> PyTree[bool]:
        """Which leaves are trained (a pytree of bools of the model's structure): none for an exact
        model, the network's floating-point arrays for a learned one."""
