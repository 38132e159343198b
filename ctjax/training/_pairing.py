"""How the teacher's earlier point is built from the student's: coupled noise (training) or one
ODE step of a velocity field (distillation)."""

import abc
from typing import Any, cast

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Velocity
from .._flow import velocity as exact_velocity_fn
from .._misc import check_instance, choice_field
from .._schedules import AbstractSchedule
from .._targets import AbstractTarget


def check_velocity(velocity: Any, *, allow_none: bool = False, none_means: str = "") -> Velocity:
    """`velocity`, or a TypeError unless it is a per-example callable `(t, x) -> dx/dt` (or None, where
    `allow_none`; `none_means` says what None stands for)."""
    if velocity is None and allow_none:
        return velocity  # pyright: ignore[reportReturnType]
    if not callable(velocity):
        alternative = f"None ({none_means}) or " if allow_none else ""
        raise TypeError(
            f"`velocity` must be {alternative}a per-example callable (t, x) -> dx/dt such as "
            f"ExactVelocity(target, schedule), got {type(velocity).__name__}."
        )
    return cast(Velocity, velocity)


class AbstractPairing(eqx.Module):
    r"""Builds the teacher's point $x_{t_{lo}}$ from data $x_0$, noise $z$ and the student's point
    $x_{t_{hi}}$: the `pairing` field of the discrete-time trainers (`ConsistencyTrainer`, `ECTTrainer`)."""

    @abc.abstractmethod
    def earlier(self, schedule: AbstractSchedule, x0: Array, z: Array, x_hi: Array, t_lo: Array, t_hi: Array) -> Array:
        """Per-example: `x0`, `z`, `x_hi` of shape `(dim,)`, scalar times."""


class CoupledNoise(AbstractPairing):
    r"""Consistency training: $x_{t_{lo}} = \alpha(t_{lo}) x_0 + \sigma(t_{lo}) z$ with the same $z$."""

    def earlier(self, schedule: AbstractSchedule, x0: Array, z: Array, x_hi: Array, t_lo: Array, t_hi: Array) -> Array:
        return schedule.interpolate(t_lo, x0, z)


class ExactVelocity(eqx.Module):
    """The probability-flow velocity of an analytic target: a perfect teacher for distillation."""

    target: AbstractTarget
    schedule: AbstractSchedule

    def __check_init__(self):
        check_instance(self.target, AbstractTarget, "target", "a ctjax target")
        check_instance(self.schedule, AbstractSchedule, "schedule", "a ctjax schedule")

    def __call__(self, t: ArrayLike, x: ArrayLike) -> Float[Array, " dim"]:
        return exact_velocity_fn(self.target, self.schedule, t, x)


class ODEStep(AbstractPairing):
    r"""Consistency distillation: one Euler or Heun step of a teacher velocity $v(t, x)$ from
    $t_{hi}$ to $t_{lo}$, $\hat x = x_{t_{hi}} + (t_{lo} - t_{hi})\, v(t_{hi}, x_{t_{hi}})$ (Heun adds the
    trapezoidal correction). `velocity` is any per-example callable `(t, x) -> dx/dt`, e.g.
    `ExactVelocity(target, schedule)` or a learned flow-matching model."""

    velocity: Velocity = eqx.field(converter=check_velocity)
    method: str = eqx.field(static=True, default="heun", converter=choice_field("method", ("euler", "heun")))

    def earlier(self, schedule: AbstractSchedule, x0: Array, z: Array, x_hi: Array, t_lo: Array, t_hi: Array) -> Array:
        h = (t_lo - t_hi).astype(x_hi.dtype)
        v_hi = self.velocity(t_hi, x_hi)
        euler = x_hi + h * v_hi
        if self.method == "euler":
            return jax.lax.stop_gradient(euler)
        v_lo = self.velocity(t_lo, euler)
        return jax.lax.stop_gradient(x_hi + 0.5 * h * (v_hi + v_lo))
