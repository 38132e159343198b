"""Type aliases shared across the library (jaxtyping)."""

import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


RealScalarLike = float | int | Array | np.ndarray | np.floating | np.integer
"""A real scalar: a Python number or a 0-d array (possibly traced)."""

Vector = Float[Array, " dim"]
Batch = Float[Array, "num dim"]
Scalar = Float[Array, ""]

__all__ = ["Array", "ArrayLike", "Batch", "PRNGKeyArray", "RealScalarLike", "Scalar", "Vector"]
