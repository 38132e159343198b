r"""How a batch of noise is paired with a batch of data before the training points are built.

`Independent` keeps the draw; `MinibatchOT` reorders the noise by the optimal assignment between
the two batches (Pooladian et al. 2023; Tong et al. 2023; sony/vct's `coupling: ot`). A
reordering leaves both marginals exact: the data batch is untouched and the noise batch is the
same multiset of i.i.d. draws.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array, Float, Int

from .._misc import check_instance


class AbstractCoupling(eqx.Module):
    r"""Pairs noise with data: `pair(x0, noise)` returns the noise batch, possibly reordered (the
    `coupling` field of the no-teacher trainers)."""

    @abc.abstractmethod
    def pair(self, x0: Float[Array, "B dim"], noise: Float[Array, "B dim"]) -> Float[Array, "B dim"]:
        """The noise to pair with the rows of `x0`."""


class Independent(AbstractCoupling):
    """Noise independent of the data (every paper's default)."""

    def pair(self, x0, noise):
        return noise


def _assignment_host(cost: np.ndarray) -> np.ndarray:
    rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost, np.float64))
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm.astype(np.int32)


def optimal_assignment(cost: Float[Array, "B B"]) -> Int[Array, " B"]:
    r"""The permutation $\pi$ minimising $\sum_i C_{i \pi(i)}$, exactly (the Hungarian method, SciPy's
    `linear_sum_assignment` on the host through `jax.pure_callback`; usable under `jit`, `scan` and
    `vmap`). At training batch sizes (a few hundred) this costs milliseconds, less than an entropic
    solver run to a tolerance at which its plan rounds to a permutation."""
    cost = jax.lax.stop_gradient(jnp.asarray(cost))
    shape = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    return jax.pure_callback(
        lambda c: np.stack([_assignment_host(m) for m in np.reshape(c, (-1,) + c.shape[-2:])]).reshape(c.shape[:-1]),
        shape,
        cost,
        vmap_method="expand_dims",
    )


class MinibatchOT(AbstractCoupling):
    r"""Minibatch optimal transport: the noise rows reordered by the exact assignment minimising
    $\sum_i \|x_0^{(i)} - z^{(\pi(i))}\|^2$. The permutation is the same for any noise scale
    $c > 0$ in $\|x_0 - c z\|^2$ (the cross term decides it), so it does not depend on the
    schedule or the example's time."""

    def pair(self, x0, noise):
        cost = -jnp.matmul(x0, noise.T, precision=jax.lax.Precision.HIGHEST)
        return noise[optimal_assignment(cost)]


def check_coupling(coupling) -> AbstractCoupling:
    check_instance(coupling, AbstractCoupling, "coupling", "Independent() or MinibatchOT()")
    return coupling
