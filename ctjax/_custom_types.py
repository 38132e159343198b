"""Type aliases shared across the library (jaxtyping)."""

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


RealScalarLike = float | int | ArrayLike
"""A real scalar: a Python number or a 0-d array (possibly traced)."""

Vector = Float[Array, " dim"]
Batch = Float[Array, "num dim"]
Scalar = Float[Array, ""]

__all__ = ["Array", "ArrayLike", "Batch", "PRNGKeyArray", "RealScalarLike", "Scalar", "Vector"]
