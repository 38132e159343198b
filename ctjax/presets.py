"""Standard targets used by the experiments, benchmarks and documentation."""

from typing import Literal

import jax.numpy as jnp
import numpy as np

from ._split import holdout_split
from ._targets import Empirical, Gaussian, GaussianMixture


def gmm2d(radius: float = 2.0, tangential_std: float = 0.3, radial_std: float = 0.1) -> GaussianMixture:
    """Eight anisotropic Gaussians on a circle, with unequal weights and full covariances.

    Component k sits at angle 2 pi k / 8, elongated along the circle; weights are proportional to
    1 + 0.5 cos(2 pi k / 8), so no symmetry makes a wrong model look right.
    """
    angles = 2 * np.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    tangent = np.stack([-np.sin(angles), np.cos(angles)], axis=1)
    radial = means / radius
    covs = tangential_std**2 * np.einsum("ki,kj->kij", tangent, tangent) + radial_std**2 * np.einsum(
        "ki,kj->kij", radial, radial
    )
    weights = 1 + 0.5 * np.cos(angles)
    return GaussianMixture(jnp.asarray(weights / weights.sum()), jnp.asarray(means), jnp.asarray(covs))


def gaussian(dim: int, condition: float = 10.0, seed: int = 0) -> Gaussian:
    """A d-dimensional Gaussian with a random rotation and eigenvalues spread log-uniformly over
    [1/sqrt(condition), sqrt(condition)], mean of norm 1."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    eig = np.exp(np.linspace(-0.5, 0.5, dim) * np.log(condition)) if dim > 1 else np.ones(1)
    mean = rng.standard_normal(dim)
    mean = mean / np.linalg.norm(mean)
    return Gaussian(jnp.asarray(mean), jnp.asarray((q * eig) @ q.T))


DIGITS_HOLDOUT = 0.2
"""The share of the digits held out by default (`ctjax train --preset digits`, the feature network)."""


def digits_points(scale: bool = True) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits, (1797, 64) float64; with `scale`, 0..16 mapped to [-1, 1]."""
    from sklearn.datasets import load_digits

    data = np.asarray(load_digits(return_X_y=True)[0], dtype=np.float64)
    return data / 8.0 - 1.0 if scale else data


def digits_labels() -> np.ndarray:
    """The class (0..9) of each image of `digits_points`."""
    from sklearn.datasets import load_digits

    return np.asarray(load_digits(return_X_y=True)[1])


def digits(scale: bool = True, split: Literal["all", "train", "heldout"] = "all") -> Empirical:
    """scikit-learn's bundled 8x8 digits (1797 images, 64 dimensions) as an Empirical target.

    With `scale`, pixel values 0..16 are mapped to [-1, 1]. `split` "train" or "heldout" takes that
    part of the default split, `holdout_split(1797, DIGITS_HOLDOUT, seed=0)` (1438 and 359 images): the
    split of `ctjax train --preset digits` and of the feature network's training. The data ship with
    scikit-learn (no download).
    """
    data = digits_points(scale)
    if split != "all":
        if split not in ("train", "heldout"):
            raise ValueError(f"`split` must be 'all', 'train' or 'heldout', got {split!r}.")
        train, heldout = holdout_split(data.shape[0], DIGITS_HOLDOUT, seed=0)
        data = data[train if split == "train" else heldout]
    return Empirical(jnp.asarray(data))
