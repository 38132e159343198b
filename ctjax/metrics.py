"""Distances between distributions and between learned and exact maps (host-side where noted)."""

import os


# POT imports every array library it finds to offer it as a backend; we hand it NumPy arrays only,
# and importing PyTorch or TensorFlow would add 10-20 s to `import ctjax` wherever they are installed.
for _framework in ("PYTORCH", "TENSORFLOW", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_framework}", "1")

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import ot
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._misc import as_float_array, check_finite, validate_int


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


def _common_float(*arrays: jax.Array):
    """The floating dtype the arrays promote to, by NumPy's rules (explicit, so strict promotion is fine)."""
    return np.result_type(*(np.dtype(a.dtype) for a in arrays))


def _cloud(x, name: str) -> jax.Array:
    arr = as_float_array(x, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty (n, d) point cloud, got shape {tuple(jnp.shape(x))}.")
    arr = check_finite(arr, name)
    return arr


def _one_dim_w1(px: jax.Array, py: jax.Array) -> jax.Array:
    r"""Exact $W_1$ between the empirical measures of the columns of `px` (n, P) and `py` (m, P), by
    $\int_0^1 |F^{-1}(u) - G^{-1}(u)| du$ with both quantile functions constant between the merged
    breakpoints $\{i/n\} \cup \{j/m\}$."""
    n, m = px.shape[0], py.shape[0]
    px, py = jnp.sort(px, axis=0), jnp.sort(py, axis=0)
    if n == m:
        return jnp.mean(jnp.abs(px - py), axis=0)
    dtype = px.dtype
    upper = jnp.sort(jnp.concatenate([jnp.arange(1, n + 1, dtype=dtype) / n, jnp.arange(1, m + 1, dtype=dtype) / m]))
    lower = jnp.concatenate([jnp.zeros((1,), dtype), upper[:-1]])
    mid = 0.5 * (lower + upper)
    ix = jnp.clip(jnp.floor(mid * n).astype(jnp.int32), 0, n - 1)
    iy = jnp.clip(jnp.floor(mid * m).astype(jnp.int32), 0, m - 1)
    return jnp.sum((upper - lower)[:, None] * jnp.abs(px[ix] - py[iy]), axis=0)


def sliced_wasserstein1(
    x: ArrayLike, y: ArrayLike, *, num_projections: int = 256, key: PRNGKeyArray
) -> Float[Array, ""]:
    r"""Monte Carlo sliced $W_1$ between the empirical measures of two point clouds:
    $\frac1P \sum_{j=1}^P W_1(\theta_j \# \mu, \theta_j \# \nu)$ over $P$ random unit directions $\theta_j$.

    Each one-dimensional $W_1$ is exact (sort and compare when the clouds have the same size, otherwise
    compare the two quantile functions on their merged breakpoints). Projections are 1-Lipschitz, so every
    term, and hence the estimate for every draw of directions, is a lower bound on $W_1(\mu, \nu)$.

    **Arguments:**

    - `x`, `y`: shapes `(n, d)` and `(m, d)` (a vector is a cloud in $d = 1$).
    - `num_projections`: $P$, the number of directions (static under jit).
    - `key`: the PRNG key for the directions.

    Pure JAX and jit-able; cost $O(P (n \log n + m \log m + (n + m) d))$.
    """
    x = _cloud(x, "x")
    y = _cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    num_projections = validate_int(num_projections, "num_projections", 1)
    dtype = _common_float(x, y)
    return _sliced_w1(x.astype(dtype), y.astype(dtype), key, num_projections)


@eqx.filter_jit
def _sliced_w1(x: jax.Array, y: jax.Array, key: PRNGKeyArray, num_projections: int) -> jax.Array:
    # Compiled once per shape (a no-op inside an outer jit): eager use would dispatch op by op.
    dirs = jr.normal(key, (num_projections, x.shape[1]), x.dtype)
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    return jnp.mean(_one_dim_w1(x @ dirs.T, y @ dirs.T))


def _psd_sqrt(cov, xp):
    vals, vecs = xp.linalg.eigh(0.5 * (cov + cov.T))
    return (vecs * xp.sqrt(xp.maximum(vals, 0.0))[None, :]) @ vecs.T


def gaussian_w2(mean1: ArrayLike, cov1: ArrayLike, mean2: ArrayLike, cov2: ArrayLike) -> float | Array:
    r"""$W_2$ between $N(m_1, S_1)$ and $N(m_2, S_2)$ by the Bures formula,

    $W_2^2 = \|m_1 - m_2\|^2 + \mathrm{tr}\big(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}\big)$,

    with symmetric PSD square roots from `eigh`. Host-side NumPy float64 (returning a float) unless an
    argument is a JAX array, in which case it is pure JAX (jit-able, returning an array). The trace
    difference cancels for nearby covariances: absolute accuracy about $\sqrt{\epsilon\,\mathrm{tr} S}$.

    **Arguments:**

    - `mean1`, `mean2`: shape `(d,)`.
    - `cov1`, `cov2`: shape `(d, d)`, symmetric positive semi-definite.
    """
    args = (mean1, cov1, mean2, cov2)
    on_host = not any(isinstance(a, jax.Array) for a in args)
    if on_host:
        xp = np
        m1, c1, m2, c2 = (np.asarray(a, dtype=np.float64) for a in args)
    else:
        xp = jnp
        arrs = [as_float_array(a, n) for a, n in zip(args, ("mean1", "cov1", "mean2", "cov2"))]
        dtype = _common_float(*arrs)
        m1, c1, m2, c2 = (a.astype(dtype) for a in arrs)
    d = m1.shape[0] if m1.ndim == 1 else -1
    for arr, name, shape in ((m1, "mean1", (d,)), (m2, "mean2", (d,)), (c1, "cov1", (d, d)), (c2, "cov2", (d, d))):
        if d < 1 or arr.shape != shape:
            raise ValueError(
                f"`{name}` must have shape {shape if d >= 1 else '(d,)'} (means (d,), covariances (d, d)), "
                f"got {tuple(arr.shape)}."
            )
    root1 = _psd_sqrt(c1, xp)
    cross = root1 @ c2 @ root1
    cross_vals = xp.linalg.eigvalsh(0.5 * (cross + cross.T))
    sq = xp.sum((m1 - m2) ** 2) + xp.trace(c1) + xp.trace(c2) - 2.0 * xp.sum(xp.sqrt(xp.maximum(cross_vals, 0.0)))
    out = xp.sqrt(xp.maximum(sq, 0.0))
    return float(out) if on_host else jnp.asarray(out)


from ._digits_features import (  # noqa: E402  (FID's analogue on the digits preset)
    digits_confidence as digits_confidence,
    digits_features as digits_features,
    digits_frechet_distance as digits_frechet_distance,
)
from ._evaluation import map_error as map_error  # noqa: E402  (learned map vs the exact flow)
from ._flow_map_evaluation import (  # noqa: E402  (learned flow maps vs the exact flow)
    flow_map_error as flow_map_error,
    semigroup_defect as semigroup_defect,
)
from ._generative_metrics import (  # noqa: E402
    frechet_distance as frechet_distance,
    memorised_fraction as memorised_fraction,
    precision_recall as precision_recall,
    PrecisionRecall as PrecisionRecall,
)
