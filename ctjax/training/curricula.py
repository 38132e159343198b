"""Discretisation curricula N(k), teacher EMA rates mu(k), time grids, index and time sampling.

Everything takes the training step as a traced integer and returns traced values, and grids are
evaluated at traced indices for a traced N, so a change of N during training never recompiles.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import ndtr
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from .._custom_types import RealScalarLike
from .._misc import is_concrete
from .._schedules import AbstractSchedule, karras_noise_levels


# ---------------------------------------------------------------------------------------------
# Curricula


class AbstractCurriculum(eqx.Module):
    """The number of discretisation points $N(k)$ at training step $k$."""

    @property
    @abc.abstractmethod
    def max_scales(self) -> int:
        """An upper bound on $N(k)$ (static: sizes the padded grids)."""

    @abc.abstractmethod
    def num_scales(self, step: Int[ArrayLike, ""]) -> Int[Array, ""]:
        """$N(k)$, as a traced integer."""


class ConstantCurriculum(AbstractCurriculum):
    """$N(k) = N$ (consistency distillation; staged training on a fixed grid)."""

    num: int = eqx.field(static=True)

    def __check_init__(self):
        if int(self.num) < 2:
            raise ValueError(f"ConstantCurriculum needs num >= 2 grid points, got {self.num}.")

    @property
    def max_scales(self) -> int:
        return int(self.num)

    def num_scales(self, step: Int[ArrayLike, ""]) -> Int[Array, ""]:
        return jnp.full((), self.num, dtype=jnp.int32)


def _check_range(name: str, s0: int, s1: int, total_steps: int, min_s0: int) -> None:
    if not (int(s0) >= min_s0 and int(s1) >= int(s0)):
        raise ValueError(f"{name} needs {min_s0} <= s0 <= s1, got s0={s0}, s1={s1}.")
    if int(total_steps) < 1:
        raise ValueError(f"{name} needs total_steps >= 1, got {total_steps}.")


class SqrtCurriculum(AbstractCurriculum):
    r"""Song et al.'s CT curriculum,
    $N(k) = \lceil \sqrt{\tfrac{k}{K}((s_1 + 1)^2 - s_0^2) + s_0^2} - 1 \rceil + 1$:
    $N(0) = s_0$, $N(K) = s_1 + 1$, non-decreasing."""

    s0: int = eqx.field(static=True, default=2)
    s1: int = eqx.field(static=True, default=150)
    total_steps: int = eqx.field(static=True, default=800_000)

    def __check_init__(self):
        _check_range("SqrtCurriculum", self.s0, self.s1, self.total_steps, 2)

    @property
    def max_scales(self) -> int:
        return int(self.s1) + 1

    def num_scales(self, step: Int[ArrayLike, ""]) -> Int[Array, ""]:
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / self.total_steps, 0.0, 1.0)
        inner = jnp.sqrt(frac * ((self.s1 + 1) ** 2 - self.s0**2) + self.s0**2)
        return (jnp.ceil(inner - 1).astype(jnp.int32) + 1).clip(2, self.s1 + 1)


class DoublingCurriculum(AbstractCurriculum):
    r"""iCT's exponential curriculum, $N(k) = \min(s_0 2^{\lfloor k/K' \rfloor}, s_1) + 1$ with
    $K' = \lfloor K / (\log_2 \lfloor s_1/s_0 \rfloor + 1) \rfloor$: 11, 21, 41, ..., 1281 by default."""

    s0: int = eqx.field(static=True, default=10)
    s1: int = eqx.field(static=True, default=1280)
    total_steps: int = eqx.field(static=True, default=400_000)

    def __check_init__(self):
        _check_range("DoublingCurriculum", self.s0, self.s1, self.total_steps, 1)

    @property
    def max_scales(self) -> int:
        return int(self.s1) + 1

    @property
    def steps_per_doubling(self) -> int:
        return max(1, int(self.total_steps // (math.log2(self.s1 // self.s0) + 1)))

    def num_scales(self, step: Int[ArrayLike, ""]) -> Int[Array, ""]:
        doublings = jnp.asarray(step, jnp.int32) // self.steps_per_doubling
        # 2^doublings overflows for long runs; cap the exponent where s0 * 2^e >= s1 anyway.
        cap = int(math.ceil(math.log2(max(self.s1 / self.s0, 1.0)))) + 1
        scaled = self.s0 * jnp.left_shift(1, jnp.minimum(doublings, cap))
        return jnp.minimum(scaled, self.s1) + 1


# ---------------------------------------------------------------------------------------------
# Teachers


class AbstractTeacher(eqx.Module):
    r"""How the teacher parameters $\theta^-$ follow the student $\theta$."""

    @abc.abstractmethod
    def decay(self, step: Int[ArrayLike, ""], num_scales: Int[ArrayLike, ""]) -> Array | None:
        r"""The EMA rate $\mu$ of $\theta^- \leftarrow \mu\theta^- + (1 - \mu)\theta$, or None for
        a stop-gradient teacher ($\theta^- = \mathrm{sg}(\theta)$, no stored copy)."""


class StopGradientTeacher(AbstractTeacher):
    r"""$\theta^- = \mathrm{sg}(\theta)$ (iCT, ECT, sCM)."""

    def decay(self, step, num_scales) -> None:
        return None


class EMATeacher(AbstractTeacher):
    r"""A constant EMA rate $\mu$ (consistency distillation uses 0.95)."""

    mu: RealScalarLike = 0.95

    def __check_init__(self):
        if is_concrete(self.mu) and not 0.0 <= float(self.mu) < 1.0:
            raise ValueError(f"EMATeacher needs 0 <= mu < 1, got {float(self.mu)}.")

    def decay(self, step, num_scales) -> Array:
        return jnp.asarray(self.mu, jnp.float32)


class AdaptiveEMATeacher(AbstractTeacher):
    r"""Song et al.'s $\mu(k) = \exp(s_0 \log \mu_0 / N(k))$. The official code divides by
    $N(k) - 1$ instead (so $\mu(0) = \mu_0^{s_0/(s_0 - 1)}$): choose with `convention`."""

    mu0: RealScalarLike = 0.9
    s0: int = eqx.field(static=True, default=2)
    convention: str = eqx.field(static=True, default="paper")

    def __check_init__(self):
        if self.convention not in ("paper", "code"):
            raise ValueError(f"`convention` must be 'paper' or 'code', got {self.convention!r}.")
        if is_concrete(self.mu0) and not 0.0 < float(self.mu0) < 1.0:
            raise ValueError(f"AdaptiveEMATeacher needs 0 < mu0 < 1, got {float(self.mu0)}.")

    def decay(self, step, num_scales) -> Array:
        n = jnp.asarray(num_scales, jnp.float32)
        if self.convention == "code":
            n = n - 1
        return jnp.exp(self.s0 * jnp.log(jnp.asarray(self.mu0, jnp.float32)) / n)


# ---------------------------------------------------------------------------------------------
# Grids


class AbstractGrid(eqx.Module):
    r"""Times $t_0 < t_1 < \dots < t_{N-1}$ of a discretisation with (traced) $N$ points."""

    @abc.abstractmethod
    def noise(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        r"""Noise level $\sigma/\alpha$ of grid point `index` in an `num`-point grid."""

    @abc.abstractmethod
    def time(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        """Time of grid point `index` in an `num`-point grid."""


class KarrasGrid(AbstractGrid):
    r"""Karras et al.'s $\rho$-grid in noise level, $n_i = (n_{min}^{1/\rho} + \tfrac{i}{N-1}(n_{max}^{1/\rho} - n_{min}^{1/\rho}))^\rho$,
    mapped to the schedule's time. The ends default to the schedule's noise levels at `t_min` and
    `t_max` (then $t_0 = t_{min}$ and $t_{N-1} = t_{max}$ exactly); pass `noise_max` where the
    schedule's noise level at `t_max` is infinite."""

    noise_min: RealScalarLike | None = None
    noise_max: RealScalarLike | None = None
    rho: float = eqx.field(static=True, default=7.0)

    def _ends(self, schedule: AbstractSchedule):
        lo = schedule.noise(schedule.t_min) if self.noise_min is None else jnp.asarray(self.noise_min)
        if self.noise_max is None:
            hi = schedule.noise(schedule.t_max)
            if is_concrete(hi) and not bool(jnp.isfinite(hi)):
                raise ValueError(
                    f"{type(schedule).__name__} has infinite noise at t_max: give KarrasGrid a finite `noise_max`."
                )
        else:
            hi = jnp.asarray(self.noise_max)
        return lo, hi

    def noise(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        lo, hi = self._ends(schedule)
        dtype = jnp.result_type(float)
        frac = jnp.asarray(index).astype(dtype) / (jnp.asarray(num).astype(dtype) - 1)
        inv = 1.0 / self.rho
        return (lo**inv + frac * (hi**inv - lo**inv)) ** self.rho

    def time(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        index = jnp.asarray(index)
        t = jnp.clip(schedule.time_at_noise(self.noise(schedule, index, num)), schedule.t_min, schedule.t_max)
        # The inverse map rounds; the default ends are the schedule's ends exactly (the boundary
        # condition makes f(t_0, x) = x only at t_min itself).
        if self.noise_min is None:
            t = jnp.where(index == 0, schedule.t_min, t)
        if self.noise_max is None:
            t = jnp.where(index == jnp.asarray(num).astype(index.dtype) - 1, schedule.t_max, t)
        return t


class FixedGrid(AbstractGrid):
    """A fixed grid of times (Li, Huang and Wei's stages, or any user grid); use it with
    `ConstantCurriculum(len(times))`."""

    times: Array

    def __init__(self, times: ArrayLike):
        times = jnp.asarray(times)
        if times.ndim != 1 or times.shape[0] < 2:
            raise ValueError(f"`times` must be a 1-D grid of at least 2 points, got shape {times.shape}.")
        if is_concrete(times) and not bool(jnp.all(jnp.diff(times) > 0)):
            raise ValueError("`times` must be strictly increasing.")
        self.times = times

    def noise(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        return schedule.noise(self.time(schedule, index, num))

    def time(self, schedule: AbstractSchedule, index: ArrayLike, num: ArrayLike) -> Array:
        return self.times[jnp.asarray(index)]


def karras_times(schedule: AbstractSchedule, num: int, rho: float = 7.0) -> Array:
    """The default `KarrasGrid` of the schedule as an array of `num` times (for inspection)."""
    levels = karras_noise_levels(schedule.noise(schedule.t_min), schedule.noise(schedule.t_max), num, rho)
    return jnp.clip(schedule.time_at_noise(levels), schedule.t_min, schedule.t_max)


# ---------------------------------------------------------------------------------------------
# Index sampling


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

    p_mean: float = -1.1
    p_std: float = 2.0

    def __check_init__(self):
        if is_concrete(self.p_std) and not float(self.p_std) > 0:
            raise ValueError(f"DiscreteLogNormal needs p_std > 0, got {self.p_std}.")

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


def check_p_std(p_std: RealScalarLike) -> None:
    """A ValueError unless `p_std` (when concrete) is positive."""
    if is_concrete(p_std) and not float(p_std) > 0:
        raise ValueError(f"`p_std` must be positive, got {p_std}.")


def lognormal_times(
    key: PRNGKeyArray, shape: tuple[int, ...], schedule: AbstractSchedule, p_mean: float, p_std: float, dtype=None
) -> Array:
    r"""Times whose noise level $\sigma(t)/\alpha(t)$ is log-normal, $\log n \sim N(P_{mean}, P_{std}^2)$,
    clipped to the schedule's range: EDM's and ECT's proposal on the variance-exploding schedule
    ($t = n$), sCM's $t = \arctan(n/\sigma_d)$ on TrigFlow."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    log_noise = p_mean + p_std * jr.normal(key, shape, dtype)
    return jnp.vectorize(schedule.time_at_log_noise)(log_noise).astype(dtype)
