"""Type aliases shared across the library (jaxtyping)."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Union

import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


if TYPE_CHECKING:
    from ._targets import AbstractTarget


RealScalarLike = float | int | Array | np.ndarray | np.floating | np.integer
"""A real scalar: a Python number or a 0-d array (possibly traced)."""

Vector = Float[Array, " dim"]
Batch = Float[Array, "num dim"]
Scalar = Float[Array, ""]

Velocity = Callable[[Array, Array], Array]
"""A per-example velocity field `(t, x) -> dx/dt`: scalar `t`, `x` of shape `(dim,)`."""

Data = Union["AbstractTarget", Float[Array, "num dim"], np.ndarray]
"""What a trainer learns from: a ctjax target (sampled on the fly) or an `(N, dim)` array of points."""

__all__ = [
    "Array",
    "ArrayLike",
    "Batch",
    "Data",
    "DTypeLike",
    "PRNGKeyArray",
    "RealScalarLike",
    "Scalar",
    "Vector",
    "Velocity",
]
