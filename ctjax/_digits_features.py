"""The digits feature network: a small classifier of scikit-learn's 8x8 digits whose penultimate
layer gives the features of `digits_frechet_distance` (FID's recipe on a 64-D data set)."""

import functools
import importlib.resources

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.special
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._generative_metrics import frechet_distance


WEIGHTS = "digits_classifier.eqx"
"""The trained weights in `ctjax/_data` (written by benchmarks/digits_classifier.py)."""


class DigitsClassifier(eqx.Module):
    r"""logits = W_3 h, h = gelu(W_2 gelu(W_1 x)): an MLP of one example `x` of shape `(64,)` in the
    digits preset's [-1, 1] scaling, with `feature_dim` penultimate features h."""

    layers: tuple[eqx.nn.Linear, eqx.nn.Linear, eqx.nn.Linear]

    def __init__(self, width: int = 256, feature_dim: int = 64, dtype=jnp.float32, *, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        self.layers = (
            eqx.nn.Linear(64, width, dtype=dtype, key=k1),
            eqx.nn.Linear(width, feature_dim, dtype=dtype, key=k2),
            eqx.nn.Linear(feature_dim, 10, dtype=dtype, key=k3),
        )

    def features(self, x: Float[Array, "64"]) -> Float[Array, " feature_dim"]:
        return jax.nn.gelu(self.layers[1](jax.nn.gelu(self.layers[0](x))))

    def __call__(self, x: Float[Array, "64"]) -> Float[Array, "10"]:
        return self.layers[2](self.features(x))


@functools.cache
def digits_classifier() -> DigitsClassifier:
    """The shipped classifier (float32; held-out accuracy in benchmarks/results/digits_classifier.json)."""
    skeleton = DigitsClassifier(key=jr.key(0))
    with importlib.resources.files("ctjax._data").joinpath(WEIGHTS).open("rb") as f:
        return eqx.tree_deserialise_leaves(f, skeleton)


def _digits_batch(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 64 or arr.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be an (n, 64) array of flattened 8x8 digits, got shape {np.shape(x)}; "
            "reshape images with x.reshape(len(x), 64)."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    if np.max(np.abs(arr)) > 4.0:
        raise ValueError(
            f"`{name}` has values up to {np.max(np.abs(arr)):.3g}, far outside the digits preset's [-1, 1] "
            "scaling; scale raw pixel values 0..16 with x / 8 - 1."
        )
    return arr


@eqx.filter_jit
def _apply(net: DigitsClassifier, x: Array) -> tuple[Array, Array]:
    features = jax.vmap(net.features)(x)
    return features, jax.vmap(net.layers[2])(features)


def digits_outputs(x: ArrayLike, name: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, logits) of digits `x` (n, 64), float64: one pass of the classifier."""
    arr = _digits_batch(x, name)
    features, logits = _apply(digits_classifier(), jnp.asarray(arr, jnp.float32))
    return np.asarray(features, np.float64), np.asarray(logits, np.float64)


def digits_features(x: ArrayLike) -> np.ndarray:
    """The classifier's penultimate features, (n, 64) float64, of digits `x` (n, 64) in [-1, 1]."""
    return digits_outputs(x)[0]


def digits_predict(x: ArrayLike) -> np.ndarray:
    """The classifier's class (0..9) of each digit of `x` (n, 64) in [-1, 1]."""
    return np.argmax(digits_outputs(x)[1], axis=1)


def digits_confidence(x: ArrayLike) -> float:
    """The classifier's mean top-class probability on `x` (n, 64): near 1 on real digits, lower on
    blurred or ambiguous samples."""
    return confidence_of(digits_outputs(x)[1])


def confidence_of(logits: np.ndarray) -> float:
    """The mean top-class probability of (n, 10) logits."""
    return float(np.mean(np.max(scipy.special.softmax(logits, axis=1), axis=1)))


def digits_frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    """`frechet_distance` of the digits classifier's penultimate features of `x` and `y`, each (n, 64)
    in the digits preset's [-1, 1] scaling (at least two points each)."""
    return frechet_distance(digits_outputs(x)[0], digits_outputs(y, "y")[0])
