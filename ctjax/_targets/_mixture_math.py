"""Closed forms for Gaussian mixtures under Gaussian noise (theory.md section 7.2).

Each component k is N(mu_k, U_k diag(lam_k) U_k^T); with x = a x0 + s z the marginal covariance
of component k is U_k diag(a^2 lam_k + s^2) U_k^T, so everything is diagonal in each U_k.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._misc import as_float_array, is_concrete, runtime_check


def _terms(x, a, s, log_weights, means, eigvals, eigvecs):
    resid = x[None, :] - a * means  # (K, d)
    rot = jnp.einsum("kji,kj->ki", eigvecs, resid)  # U_k^T (x - a mu_k)
    var = a**2 * eigvals + s**2  # (K, d): marginal variances per eigendirection
    d = x.shape[-1]
    log_comp = -0.5 * jnp.sum(rot**2 / var + jnp.log(var), axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
    return rot, var, log_weights + log_comp


def log_prob(x, a, s, log_weights, means, eigvals, eigvecs) -> Array:
    _, _, logits = _terms(x, a, s, log_weights, means, eigvals, eigvecs)
    return jax.nn.logsumexp(logits)


def score(x, a, s, log_weights, means, eigvals, eigvecs) -> Array:
    rot, var, logits = _terms(x, a, s, log_weights, means, eigvals, eigvecs)
    resp = jax.nn.softmax(logits)
    return -jnp.einsum("k,kij,kj->i", resp, eigvecs, rot / var)


def _component_posteriors(x, a, s, log_weights, means, eigvals, eigvecs):
    rot, var, logits = _terms(x, a, s, log_weights, means, eigvals, eigvecs)
    resp = jax.nn.softmax(logits)
    comp_means = means + a * jnp.einsum("kij,kj->ki", eigvecs, eigvals / var * rot)
    return resp, comp_means, var


def posterior_mean(x, a, s, log_weights, means, eigvals, eigvecs) -> Array:
    resp, comp_means, _ = _component_posteriors(x, a, s, log_weights, means, eigvals, eigvecs)
    return resp @ comp_means


def sample_posterior(key, num: int, x, a, s, log_weights, means, eigvals, eigvecs) -> Array:
    """`num` draws of x0 | x: a component by the responsibilities (skipped for one component),
    then its posterior N(m_k, U_k diag(lam_k s^2 / (a^2 lam_k + s^2)) U_k^T)."""
    resp, comp_means, var = _component_posteriors(x, a, s, log_weights, means, eigvals, eigvecs)
    std = jnp.sqrt(eigvals * s**2 / var)  # (K, d): within-component posterior standard deviations
    if means.shape[0] == 1:
        comp, key_z = jnp.zeros((num,), jnp.int32), key
    else:
        key_c, key_z = jax.random.split(key)
        comp = jax.random.categorical(key_c, jnp.log(resp), shape=(num,))
    z = jax.random.normal(key_z, (num, x.shape[-1]), dtype=x.dtype)
    return comp_means[comp] + jnp.einsum("nij,nj->ni", eigvecs[comp], z * std[comp])


def posterior_covariance(x, a, s, log_weights, means, eigvals, eigvecs) -> Array:
    resp, comp_means, var = _component_posteriors(x, a, s, log_weights, means, eigvals, eigvecs)
    # Within component k: Sigma - a^2 Sigma C^{-1} Sigma = U diag(lam s^2 / (a^2 lam + s^2)) U^T.
    within = jnp.einsum("k,kij,kj,klj->il", resp, eigvecs, eigvals * s**2 / var, eigvecs)
    centred = comp_means - (resp @ comp_means)[None, :]
    between = jnp.einsum("k,ki,kj->ij", resp, centred, centred)
    return within + between


def covariance_parts(cov, dim: int, name: str):
    """Validate one covariance given as a scalar, a diagonal vector or a full matrix; return
    (full matrix, eigenvalues, eigenvectors)."""
    cov = as_float_array(cov, name)
    if cov.ndim == 0:
        cov = cov * jnp.eye(dim, dtype=cov.dtype)
    elif cov.ndim == 1:
        if cov.shape[0] != dim:
            raise ValueError(f"`{name}` as a diagonal must have length {dim}, got {cov.shape[0]}.")
        cov = jnp.diag(cov)
    elif cov.shape != (dim, dim):
        raise ValueError(f"`{name}` must have shape ({dim}, {dim}), got {tuple(cov.shape)}.")
    not_finite = f"`{name}` contains NaN or infinite values; pass finite numbers."
    not_symmetric = f"`{name}` must be symmetric; symmetrise it with (cov + cov.T) / 2."
    not_definite = "Add a small multiple of the identity, or use Empirical for point masses."
    if is_concrete(cov):
        c = np.asarray(cov, dtype=np.float64)
        if not np.all(np.isfinite(c)):
            raise ValueError(not_finite)
        scale = max(float(np.max(np.abs(c))), 1e-300)
        if np.max(np.abs(c - c.T)) > 1e-6 * scale:
            raise ValueError(not_symmetric)
        smallest = float(np.linalg.eigvalsh((c + c.T) / 2)[0])
        if not smallest > 0:
            raise ValueError(
                f"`{name}` must be positive definite; its smallest eigenvalue is {smallest:.3g}. {not_definite}"
            )
    else:
        scale = jnp.maximum(jnp.max(jnp.abs(cov)), 1e-300)
        cov = runtime_check(cov, ~jnp.all(jnp.isfinite(cov)), not_finite)
        cov = runtime_check(cov, jnp.max(jnp.abs(cov - cov.T)) > 1e-6 * scale, not_symmetric)
    cov = 0.5 * (cov + cov.T)
    eigvals, eigvecs = jnp.linalg.eigh(cov)
    if not is_concrete(cov):
        cov, eigvals, eigvecs = runtime_check(
            (cov, eigvals, eigvecs), ~(eigvals[0] > 0), f"`{name}` must be positive definite. {not_definite}"
        )
    return cov, eigvals, eigvecs
