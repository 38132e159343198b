r"""Estimates of the probability-flow velocity that consistency training uses in place of a teacher.

Training without a teacher builds the teacher's point from a posterior-mean estimate $\hat x_0$ of
$E[x_0 \mid x_t]$ and the matching noise $\hat z = (x_t - \alpha \hat x_0)/\sigma$, so the velocity
$\dot\alpha \hat x_0 + \dot\sigma \hat z$ estimates the exact one. `OneSample` takes the generating
$x_0$ itself (classical CT: unbiased, with a variance that does not shrink as the grid is refined);
`ReferenceBatch` takes the self-normalised posterior mean over a reference set (Xu, Tong and
Jaakkola's stable target field).
"""

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import Data
from .._misc import choice_field, int_field, optional
from .._schedules import AbstractSchedule
from .._targets import AbstractTarget
from ._pairing import CoupledNoise


class AbstractVelocityEstimate(eqx.Module):
    r"""Turns a batch of training draws $(x_0, z)$ with $x_t = \alpha(t) x_0 + \sigma(t) z$ into
    $(\hat x_0, \hat z)$ with the same $x_t = \alpha \hat x_0 + \sigma \hat z$: the `velocity_estimate`
    field of the no-teacher trainers. Batch-level (the reference set is shared by the batch), under
    stop-gradient."""

    @abc.abstractmethod
    def estimate(
        self,
        schedule: AbstractSchedule,
        t: Float[Array, " B"],
        x_t: Float[Array, "B dim"],
        x0: Float[Array, "B dim"],
        noise: Float[Array, "B dim"],
        *,
        key: PRNGKeyArray,
    ) -> tuple[Float[Array, "B dim"], Float[Array, "B dim"]]:
        r"""$(\hat x_0, \hat z)$ for times `t`, points `x_t` and the draws (`x0`, `noise`) that made them."""

    def velocity(
        self,
        schedule: AbstractSchedule,
        t: Float[Array, " B"],
        x_t: Float[Array, "B dim"],
        x0: Float[Array, "B dim"],
        noise: Float[Array, "B dim"],
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, "B dim"]:
        r"""The estimated probability-flow velocity $\dot\alpha(t) \hat x_0 + \dot\sigma(t) \hat z$ of each row."""
        x0_hat, noise_hat = self.estimate(schedule, t, x_t, x0, noise, key=key)
        _, _, da, ds = jax.vmap(schedule.coefficients)(t)
        dtype = x_t.dtype
        return da.astype(dtype)[:, None] * x0_hat + ds.astype(dtype)[:, None] * noise_hat


class OneSample(AbstractVelocityEstimate):
    r"""$\hat x_0 = x_0$, $\hat z = z$: the one-sample velocity $(x_t - x_0)/t$ of classical consistency
    training (the default of every paper-named constructor)."""

    def estimate(self, schedule, t, x_t, x0, noise, *, key):
        return x0, noise


def _fresh_pool_chunk(data: Data, key: PRNGKeyArray, num: int, dtype) -> Array:
    """`num` fresh reference points: sampled from a target, or drawn with replacement from an array."""
    if isinstance(data, AbstractTarget):
        return data.sample(key, num).astype(dtype)
    return jnp.asarray(data)[jr.randint(key, (num,), 0, data.shape[0])].astype(dtype)


def _coefficients(schedule: AbstractSchedule, t: Array, dtype) -> tuple[Array, Array]:
    """$(\alpha(t), \\sigma(t))$ per row, in `dtype`."""
    return jax.vmap(schedule.alpha)(t).astype(dtype), jax.vmap(schedule.sigma)(t).astype(dtype)


def _chunk_stats(x_t, a, inv_var, points, mask):
    r"""Per query row: (max logit m, $\sum_j e^{l_j - m}$, $\sum_j e^{l_j - m} p_j$) over one chunk of
    reference points, with $l_j = (a\, x_t \cdot p_j - a^2 \|p_j\|^2/2)/\sigma^2$ = $\log p_t(x_t \mid p_j)$
    up to a constant in $j$ (one matrix product: memory O(B x chunk))."""
    sq = jnp.sum(points**2, axis=-1)
    logits = (a[:, None] * (x_t @ points.T) - 0.5 * (a**2)[:, None] * sq[None, :]) * inv_var[:, None]
    logits = jnp.where(mask[None, :], logits, -jnp.inf)
    m = jnp.max(logits, axis=-1)
    w = jnp.exp(logits - m[:, None])
    return m, jnp.sum(w, axis=-1), w @ points


def _merge(u, v):
    """Combine two (m, sum, weighted sum) triples of the streaming softmax."""
    (m1, s1, v1), (m2, s2, v2) = u, v
    m = jnp.maximum(m1, m2)
    c1, c2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
    return m, c1 * s1 + c2 * s2, c1[:, None] * v1 + c2[:, None] * v2


class ReferenceBatch(AbstractVelocityEstimate):
    r"""The stable-target-field estimate (Xu, Tong and Jaakkola 2023; for consistency training, Wang
    et al. 2024): the self-normalised posterior mean over a reference set $\{x_0^{(i)}\}$,

    $w_i = \mathrm{softmax}_i\big(\log p_t(x_t \mid x_0^{(i)})\big) = \mathrm{softmax}_i\big(-\|x_t - \alpha x_0^{(i)}\|^2/2\sigma^2\big)$,
    $\hat x_0 = \sum_i w_i x_0^{(i)}$, $\hat z = (x_t - \alpha \hat x_0)/\sigma$,

    for any schedule's $\alpha(t)$ and $\sigma(t)$. The reference set contains each example's own
    $x_0$ (so the estimate is consistent and exact where the posterior concentrates on it) and is
    `reference` (the whole minibatch, or only the example's own $x_0$) plus a pool. The pool has
    `pool_size` points drawn afresh every step from `data` (a target, or an `(N, dim)` array drawn with
    replacement), or, with `pool_size=None`, is the whole array `data`, every step. It is
    processed `chunk_size` points at a time by a streaming softmax: memory O(batch x chunk) for any
    pool size. As the set grows it tends to the exact posterior mean of the data distribution.

    **Arguments:**

    - `pool_size`: fresh reference points per step (0: the minibatch alone), or None for the whole
      array `data` as a fixed pool.
    - `data`: where the pool comes from (needed unless `pool_size=0`): the training target or data array.
    - `reference`: which training points enter the set: `"batch"` (all of the minibatch, the default),
      `"self"` (each example's own $x_0$ only; with no pool this is `OneSample` exactly) or `"none"`
      (the pool alone: only for a fixed pool that holds every training point, `pool_size=None`).
    - `chunk_size`: pool points per chunk of the streaming softmax.
    """

    pool_size: int | None = eqx.field(static=True, default=0, converter=optional(int_field("pool_size", 0)))
    data: Any = None
    reference: str = eqx.field(
        static=True, default="batch", converter=choice_field("reference", ("batch", "self", "none"))
    )
    chunk_size: int = eqx.field(static=True, default=4096, converter=int_field("chunk_size", 1))

    def __check_init__(self):
        if self.data is not None and not isinstance(self.data, AbstractTarget):
            shape = getattr(self.data, "shape", None)
            if shape is None or len(shape) != 2 or shape[0] == 0:
                raise ValueError(
                    f"`data` must be a ctjax target or a non-empty (N, dim) array, got {type(self.data).__name__}"
                    f" with shape {shape}."
                )
        if self.pool_size != 0 and self.data is None:
            raise ValueError(
                "`ReferenceBatch` with a pool needs `data`: pass the training target or data array "
                "(ReferenceBatch(pool_size, data=target)), or use pool_size=0 for the minibatch alone."
            )
        if self.pool_size is None and isinstance(self.data, AbstractTarget):
            raise ValueError(
                "`pool_size=None` means the whole data array as a fixed pool; a target has no finite set of "
                "points: pass its samples, or a pool_size to draw fresh points every step."
            )
        if self.reference == "none" and self.pool_size is not None:
            raise ValueError(
                '`reference="none"` leaves each example\'s own x0 out of the set; that is only right for a fixed '
                'pool that holds every training point (pool_size=None). Use reference="batch" or "self".'
            )

    def posterior_mean(
        self, schedule: AbstractSchedule, t: Array, x_t: Array, x0: Array, *, key: PRNGKeyArray
    ) -> Array:
        r"""$\hat x_0 = \sum_i w_i x_0^{(i)}$ for each row of `x_t` at times `t` (`x0`: the generating points)."""
        return self._posterior_mean(*_coefficients(schedule, t, x_t.dtype), x_t, x0, key)

    def _posterior_mean(self, a: Array, s: Array, x_t: Array, x0: Array, key: PRNGKeyArray) -> Array:
        noiseless = s == 0
        inv_var = 1.0 / jnp.where(noiseless, 1.0, s) ** 2
        num = x_t.shape[0]
        if self.reference == "batch":
            stats = _chunk_stats(x_t, a, inv_var, x0, jnp.ones((num,), bool))
        elif self.reference == "self":
            own = a * jnp.sum(x_t * x0, axis=-1) - 0.5 * a**2 * jnp.sum(x0**2, axis=-1)
            own = own * inv_var
            stats = (own, jnp.ones_like(own), x0)
        else:
            stats = None
        _, total, weighted = self._pool_stats(stats, x_t, a, inv_var, key)
        mean = weighted / total[:, None]
        # Where sigma = 0 the posterior is the point itself.
        return jnp.where(noiseless[:, None], x0, mean)

    def _pool_stats(self, stats, x_t, a, inv_var, key):
        if self.pool_size == 0:
            return stats
        dtype = x_t.dtype
        fixed = self.pool_size is None
        points = jnp.asarray(self.data).astype(dtype) if fixed else None
        size: int = points.shape[0] if points is not None else int(self.pool_size or 0)
        chunk = min(self.chunk_size, size)
        num_chunks = math.ceil(size / chunk)
        mask = jnp.asarray((np.arange(num_chunks * chunk) < size).reshape(num_chunks, chunk))
        if points is not None:
            padded = jnp.concatenate([points, jnp.zeros((num_chunks * chunk - size, points.shape[1]), dtype)])
            chunks = (padded.reshape(num_chunks, chunk, -1), mask)
        else:
            chunks = (jr.split(key, num_chunks), mask)

        def body(carry, c):
            source, m = c
            # A fixed pool's chunk is its points; a fresh pool's is a key to draw them with.
            points = source if fixed else _fresh_pool_chunk(self.data, source, chunk, dtype)
            new = _chunk_stats(x_t, a, inv_var, points, m)
            return (new if carry is None else _merge(carry, new)), None

        if stats is None:
            # No batch part: start from the first chunk, scan the rest.
            first = jax.tree.map(lambda leaf: leaf[0], chunks)
            stats, _ = body(None, first)
            chunks = jax.tree.map(lambda leaf: leaf[1:], chunks)
        stats, _ = jax.lax.scan(body, stats, chunks)
        return stats

    def estimate(self, schedule, t, x_t, x0, noise, *, key):
        x_t, x0 = jax.lax.stop_gradient((x_t, x0))
        a, s = _coefficients(schedule, t, x_t.dtype)
        x0_hat = jax.lax.stop_gradient(self._posterior_mean(a, s, x_t, x0, key))
        # z_hat = (x_t - a x0_hat)/s, written as a correction of z so that x0_hat = x0 gives z back exactly.
        ratio = jnp.where(s == 0, 0.0, a / jnp.where(s == 0, 1.0, s))
        noise_hat = noise + ratio[:, None] * (x0 - x0_hat)
        return x0_hat, jax.lax.stop_gradient(noise_hat)


def check_velocity_estimate(estimate: Any) -> AbstractVelocityEstimate:
    """`estimate`, or a TypeError naming the field."""
    if not isinstance(estimate, AbstractVelocityEstimate):
        raise TypeError(
            f"`velocity_estimate` must be OneSample() or ReferenceBatch(...), got {type(estimate).__name__}."
        )
    return estimate


def check_no_teacher_options(estimate: Any, pairing: Any = None) -> None:
    """A TypeError unless `estimate` is a velocity estimate; a ValueError for an estimate other than
    `OneSample` with a teacher's `pairing` (an ODE step ignores the training draws)."""
    check_velocity_estimate(estimate)
    if pairing is not None and not isinstance(pairing, CoupledNoise) and not isinstance(estimate, OneSample):
        raise ValueError(
            f"`velocity_estimate` replaces the teacher in training without one; with the teacher's pairing "
            f"{type(pairing).__name__} it has no effect. Use OneSample() or pairing=CoupledNoise()."
        )
