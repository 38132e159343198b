"""Sample-based metrics of generative models: Fréchet distance, precision and recall, memorisation.

Host-side NumPy in float64, like `wasserstein1`: they run once per evaluation on a few thousand points.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike


# Rows of the distance matrix computed at once: a (chunk, m) float64 block, 64 MB at m = 16 384.
_CHUNK = 512


def _cloud(x: ArrayLike, name: str, min_points: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` must be an (n, d) array of n points in d dimensions, got shape {np.shape(x)}.")
    if arr.shape[0] < min_points:
        raise ValueError(f"`{name}` needs at least {min_points} points, got {arr.shape[0]}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


def _same_dim(x: np.ndarray, y: np.ndarray, names: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names} must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")


def _distance_blocks(x: np.ndarray, y: np.ndarray):
    """(start, block) with block[i, j] = |x[start + i] - y[j]|, a few hundred rows at a time."""
    y_sq = np.sum(y**2, axis=1)
    for start in range(0, x.shape[0], _CHUNK):
        rows = x[start : start + _CHUNK]
        sq = np.sum(rows**2, axis=1)[:, None] + y_sq[None, :] - 2.0 * rows @ y.T
        yield start, np.sqrt(np.maximum(sq, 0.0))


def _smallest(x: np.ndarray, y: np.ndarray, count: int, exclude_self: bool = False) -> np.ndarray:
    """(n, count): the `count` smallest distances from each point of `x` to the points of `y`, ascending
    (with `exclude_self`, x is y and each point's distance to itself is left out)."""
    out = np.empty((x.shape[0], count))
    for start, block in _distance_blocks(x, y):
        if exclude_self:
            rows = np.arange(block.shape[0])
            block[rows, start + rows] = np.inf
        out[start : start + block.shape[0]] = np.sort(np.partition(block, count - 1, axis=1)[:, :count], axis=1)
    return out


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each point lies in at least one ball B(centre_j, radius_j)."""
    inside = np.empty(points.shape[0], dtype=bool)
    for start, block in _distance_blocks(points, centres):
        inside[start : start + block.shape[0]] = np.any(block <= radii[None, :], axis=1)
    return inside


def frechet_distance(features_x: ArrayLike, features_y: ArrayLike) -> float:
    r"""The Fréchet distance between Gaussians fitted to two sets of features (FID's formula),

    $\|\mu_x - \mu_y\|^2 + \mathrm{tr}\big(\Sigma_x + \Sigma_y - 2 (\Sigma_x^{1/2} \Sigma_y \Sigma_x^{1/2})^{1/2}\big)$,

    the squared $W_2$ between $N(\mu_x, \Sigma_x)$ and $N(\mu_y, \Sigma_y)$, with the sample means and the
    unbiased sample covariances. On raw data it is a data-space Fréchet distance; on a classifier's
    features (`digits_frechet_distance`) it is FID's analogue. Its estimate is biased upwards at finite
    sample size, so compare it with its floor: the same distance between two samples of the data.

    **Arguments:**

    - `features_x`, `features_y`: shapes `(n, p)` and `(m, p)`, at least two rows each.

    **Returns:** a float (host-side, float64).
    """
    from .metrics import gaussian_w2

    x = _cloud(features_x, "features_x", 2)
    y = _cloud(features_y, "features_y", 2)
    _same_dim(x, y, "`features_x` and `features_y`")
    cov_x, cov_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    return float(gaussian_w2(x.mean(axis=0), cov_x, y.mean(axis=0), cov_y)) ** 2


class PrecisionRecall(NamedTuple):
    """Kynkäänniemi et al.'s precision (the share of samples on the data manifold) and recall (the
    share of the data on the samples' manifold)."""

    precision: float
    recall: float


def precision_recall(samples: ArrayLike, reference: ArrayLike, k: int = 3) -> PrecisionRecall:
    r"""Improved precision and recall of a generative model (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, each of radius its distance to its
    $k$-th nearest neighbour in the same set. Precision is the share of `samples` inside the reference
    manifold; recall is the share of `reference` inside the samples' manifold. Copies of the reference
    score (1, 1); a model that collapses onto a few reference points keeps its precision and loses
    recall; blurred samples lose precision.

    **Arguments:**

    - `samples`, `reference`: shapes `(n, d)` and `(m, d)` (data, or features of data), each with more
      than `k` points. Compare sets of equal size: the balls shrink as a set grows.
    - `k`: the neighbour that sets the radii (3 in the paper).

    **Returns:** `PrecisionRecall(precision, recall)`, floats in [0, 1].
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`k` must be a positive integer (the paper's k = 3), got {k!r}.")
    x = _cloud(samples, "samples", k + 1)
    y = _cloud(reference, "reference", k + 1)
    _same_dim(x, y, "`samples` and `reference`")
    radius_x = _smallest(x, x, k, exclude_self=True)[:, -1]
    radius_y = _smallest(y, y, k, exclude_self=True)[:, -1]
    return PrecisionRecall(float(np.mean(_covered(x, y, radius_y))), float(np.mean(_covered(y, x, radius_x))))


def memorised_fraction(samples: ArrayLike, train: ArrayLike, ratio: float = 1 / 3) -> float:
    r"""The share of samples that copy a training point: those whose nearest training point is closer
    than `ratio` times their second-nearest, $\|x - p_{(1)}\| < \text{ratio}\, \|x - p_{(2)}\|$ (Yoon
    et al. 2023; Gu et al. 2023). Copies of training points score 1; fresh draws from the data
    distribution score about 0.

    **Arguments:**

    - `samples`: shape `(n, d)`.
    - `train`: shape `(m, d)`, the training set, at least two points.
    - `ratio`: in (0, 1); 1/3 as in the papers.

    **Returns:** a float in [0, 1].
    """
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"`ratio` must lie in (0, 1) (1/3 in the papers), got {ratio}.")
    x = _cloud(samples, "samples")
    p = _cloud(train, "train", 2)
    _same_dim(x, p, "`samples` and `train`")
    nearest = _smallest(x, p, 2)
    return float(np.mean(nearest[:, 0] < ratio * nearest[:, 1]))
