"""Exact staged consistency training for an empirical (Dirac-mixture) target, by nested recursion
(theory.md section 7.6)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._misc import check_point
from .._targets import Empirical
from ._gaussian_oracle import check_grid


class DiracStagedCT(eqx.Module):
    r"""The exact staged-CT minimisers for $p_{data} = \sum_i \pi_i \delta_{p_i}$ with coupled noise:
    $f^\star_1 = \mathrm{id}$ and

    $f^\star_k(x) = E[f^\star_{k-1}(r_k x + b_k X_0) \mid X_k = x]
    = \sum_i w_i(x) f^\star_{k-1}(r_k x + b_k p_i)$,

    with $w_i$ the posterior weights at $(a_k, s_k)$, $r_k = s_{k-1}/s_k$, $b_k = a_{k-1} - a_k r_k$.

    Evaluated by nested recursion (unrolled at trace time, with nested vmaps): one evaluation of $f^\star_k$
    sums $N^{k-1}$ terms, so work and memory per point grow as $N^{k-1} d$. It is ground truth for small
    problems ($T \lesssim 6$, $N \lesssim 10$); theory.md 7.6 quotes the cruder $N^k$.
    Per example (`x` of shape `(dim,)`); jit-able and vmap-able over `x`. Build it with `dirac_staged_ct`.
    """

    target: Empirical
    alphas: Float[Array, " T"]
    sigmas: Float[Array, " T"]

    @property
    def num_stages(self) -> int:
        return self.alphas.shape[0]

    def _apply(self, k: int, x: Array) -> Array:
        if k == 1:
            return x
        a, s, a_prev, s_prev = (
            c.astype(x.dtype) for c in (self.alphas[k - 1], self.sigmas[k - 1], self.alphas[k - 2], self.sigmas[k - 2])
        )
        r, b = s_prev / s, (a_prev * s - a * s_prev) / s
        weights = self.target.posterior_weights(x, a, s)  # (N,)
        inputs = r * x[None, :] + b * self.target.points.astype(x.dtype)  # (N, dim): X'_{k-1} given X_0 = p_i
        values = jax.vmap(lambda y: self._apply(k - 1, y))(inputs)
        return weights @ values

    def stage(self, k: int) -> Callable[[ArrayLike], Float[Array, " dim"]]:
        r"""The function $x \mapsto f^\star_k(x)$, for $1 \le k \le T$."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_stages:
            raise ValueError(f"The stage must be an integer in [1, {self.num_stages}], got {k!r}.")
        return lambda x: _evaluate(self, k, check_point(x, self.target.dim))

    def __call__(self, x: ArrayLike) -> Float[Array, " dim"]:
        r"""$f^\star_T(x)$, the one-step generator of exact staged CT, for one point `x`."""
        return self.stage(self.num_stages)(x)


@eqx.filter_jit
def _evaluate(oracle: DiracStagedCT, k: int, x: Array) -> Array:
    # Compiled as a whole (k is static): eager calls would otherwise dispatch the unrolled recursion op by op.
    return oracle._apply(k, x)


def dirac_staged_ct(
    target: Empirical, alphas: ArrayLike, sigmas: ArrayLike, *, max_evaluations: int = 10**8
) -> DiracStagedCT:
    r"""The exact staged-CT minimisers for an `Empirical` target on a stage grid.

    **Arguments:**

    - `target`: an `Empirical` with $N$ points.
    - `alphas`, `sigmas`: shape `(T,)`, the coefficients at the stage times (`stage_grid`).
    - `max_evaluations`: refuse grids whose cost per point, the $N^{T-1}$ terms of $f^\star_T$, exceeds this.
    """
    if not isinstance(target, Empirical):
        raise TypeError(f"`target` must be a ctjax.Empirical, got {type(target).__name__}.")
    alphas, sigmas = check_grid(alphas, sigmas)
    cost = target.num_points ** (alphas.shape[0] - 1)
    if cost > max_evaluations:
        raise ValueError(
            f"The exact Dirac recursion costs N^(T-1) = {target.num_points}^{alphas.shape[0] - 1} = {cost:.3g} "
            f"terms per point, above `max_evaluations` = {max_evaluations:.3g}; use fewer stages or points "
            "(T <= ~6, N <= ~10), or raise `max_evaluations`."
        )
    return DiracStagedCT(target, jnp.asarray(alphas), jnp.asarray(sigmas))
