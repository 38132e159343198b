"""Discretisation curricula: the number of grid points N(k) at training step k.

Each takes the step as a traced integer and returns a traced one, so a change of N during
training never recompiles.
"""

import abc
import math
from typing import ClassVar, TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int

from .._misc import int_field


class AbstractCurriculum(eqx.Module):
    """The number of discretisation points $N(k)$ at training step $k$."""

    if TYPE_CHECKING:  # an AbstractVar would be a constructor argument to type checkers
        max_scales: ClassVar[int]
    else:
        max_scales: eqx.AbstractVar[int]
        """An upper bound on $N(k)$ (static: sizes the padded grids)."""

    @abc.abstractmethod
    def num_scales(self, step: Int[ArrayLike, ""]) -> Int[Array, ""]:
        """$N(k)$, as a traced integer."""


class ConstantCurriculum(AbstractCurriculum):
    """$N(k) = N$ (consistency distillation; staged training on a fixed grid)."""

    num: int = eqx.field(static=True, converter=int_field("num", 2))

    @property
    def max_scales(self) -> int:
        return int(self.num)

    def num_scales(self, step: Int[ArrayLike, ""]) -> Int[Array, ""]:
        return jnp.full((), self.num, dtype=jnp.int32)


def _check_range(name: str, s0: int, s1: int) -> None:
    if not s1 >= s0:
        raise ValueError(f"{name} needs s0 <= s1, got s0={s0}, s1={s1}.")


class SqrtCurriculum(AbstractCurriculum):
    r"""Song et al.'s CT curriculum,
    $N(k) = \lceil \sqrt{\tfrac{k}{K}((s_1 + 1)^2 - s_0^2) + s_0^2} - 1 \rceil + 1$:
    $N(0) = s_0$, $N(K) = s_1 + 1$, non-decreasing."""

    s0: int = eqx.field(static=True, default=2, converter=int_field("s0", 2))
    s1: int = eqx.field(static=True, default=150, converter=int_field("s1", 2))
    total_steps: int = eqx.field(static=True, default=800_000, converter=int_field("total_steps", 1))

    def __check_init__(self):
        _check_range("SqrtCurriculum", self.s0, self.s1)

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

    s0: int = eqx.field(static=True, default=10, converter=int_field("s0", 1))
    s1: int = eqx.field(static=True, default=1280, converter=int_field("s1", 1))
    total_steps: int = eqx.field(static=True, default=400_000, converter=int_field("total_steps", 1))

    def __check_init__(self):
        _check_range("DoublingCurriculum", self.s0, self.s1)

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
