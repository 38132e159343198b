"""Distances between distributions and between learned and exact maps (host-side where noted)."""

import numpy as np
import ot
from jaxtyping import ArrayLike


def _as_cloud(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty (n, d) point cloud, got shape {np.shape(x)}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


def wasserstein1(x: ArrayLike, y: ArrayLike, *, num_iter_max: int = 1_000_000) -> float:
    """Exact $W_1$ between the empirical measures of two point clouds (uniform weights), with the
    Euclidean ground cost, by POT's network simplex in float64. Host-side: not jit-able.

    Cost is $O(n^3)$ in time and $O(n m)$ in memory; a few thousand points per side is practical.
    """
    x = _as_cloud(x, "x")
    y = _as_cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    cost = ot.dist(x, y, metric="euclidean")
    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    return float(np.asarray(ot.emd2(a, b, cost, numItermax=num_iter_max)))
