"""Interval index sampling over a discretisation grid (uniform; iCT's discretised log-normal)."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import ndtr
from jaxtyping import Array, Int, PRNGKeyArray

from .._misc import check_p_std, finite_field
from .._schedules import AbstractSchedule
from ._grids import AbstractGrid


class AbstractIndexSampler(eqx.Module):
    r"""Draws interval indices $i \in \{0, \dots, N-2\}$ (pairs $t_i < t_{i+1}$)."""

    @abc.abstractmethod
    def sample(
        self,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        grid: AbstractGrid,
        schedule: AbstractSchedule,
        num: Array,
        max_num: int,
    ) -> Int[Array, "..."]:
        """Indices of shape `shape` for an `num`-point grid (`num <= max_num`, `max_num` static)."""


class UniformIndex(AbstractIndexSampler):
    r"""$i \sim U\{0, \dots, N-2\}$ (Song et al.)."""

    def sample(self, key, shape, grid, schedule, num, max_num):
        return jr.randint(key, shape, 0, num - 1, dtype=jnp.int32)


class DiscreteLogNormal(AbstractIndexSampler):
    r"""iCT's discretised log-normal proposal over intervals,
    $p(i) \propto \Phi((\log n_{i+1} - P_{mean})/P_{std}) - \Phi((\log n_i - P_{mean})/P_{std})$."""

    p_mean: float = eqx.field(default=-1.1, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=2.0, converter=check_p_std)

    def log_probs(self, grid: AbstractGrid, schedule: AbstractSchedule, num: Array, max_num: int) -> Array:
        """Log-probabilities of the `max_num - 1` intervals; those beyond `num - 1` are -inf."""
        idx = jnp.arange(max_num - 1, dtype=jnp.int32)
        num = jnp.asarray(num, jnp.int32)
        valid = idx < num - 1
        lo = grid.noise(schedule, jnp.minimum(idx, num - 2), num)
        hi = grid.noise(schedule, jnp.minimum(idx + 1, num - 1), num)
        u_lo = (jnp.log(lo) - self.p_mean) / self.p_std
        u_hi = (jnp.log(hi) - self.p_mean) / self.p_std
        # Difference of normal CDFs, taken on the side where it does not cancel.
        mass = jnp.where(u_lo > 0, ndtr(-u_lo) - ndtr(-u_hi), ndtr(u_hi) - ndtr(u_lo))
        return jnp.where(valid, jnp.log(jnp.maximum(mass, 1e-30)), -jnp.inf)

    def sample(self, key, shape, grid, schedule, num, max_num):
        return jax.random.categorical(key, self.log_probs(grid, schedule, num, max_num), shape=shape).astype(jnp.int32)
