"""Boundary-condition parametrizations c_skip, c_out, c_in, c_noise."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._custom_types import RealScalarLike
from .._misc import finite_field, positive_field, static_positive_float
from .._schedules import AbstractSchedule, TrigFlow


class AbstractScalings(eqx.Module):
    r"""$f(t, x) = c_{skip}(t)\, x + c_{out}(t)\, F(c_{in}(t)\, x,\ c_{noise}(t))$ with
    $c_{skip}(t_{min}) = 1$ and $c_{out}(t_{min}) = 0$."""

    @abc.abstractmethod
    def __call__(self, schedule: AbstractSchedule, t: ArrayLike) -> tuple[Array, Array, Array, Array]:
        """$(c_{skip}, c_{out}, c_{in}, c_{noise})$ at time `t`."""


class EDMScalings(AbstractScalings):
    r"""Song et al.'s consistency-model scalings (EDM's with the $\sigma_{min}$ offset), for any
    schedule through the variance-exploding reduction $y = x/\alpha$, $n = \sigma/\alpha$:

    $f(t, x) = \alpha_{min}\,[c^{VE}_{skip}(n)\, y + c^{VE}_{out}(n)\, F(c^{VE}_{in}(n)\, y, \tfrac14 \log n)]$ with
    $c^{VE}_{skip} = \sigma_d^2 / ((n - n_{min})^2 + \sigma_d^2)$,
    $c^{VE}_{out} = \sigma_d (n - n_{min}) / \sqrt{\sigma_d^2 + n^2}$,
    $c^{VE}_{in} = 1/\sqrt{n^2 + \sigma_d^2}$.

    Written in $(\alpha, \sigma)$, with $\Delta = \sigma\alpha_{min} - \sigma_{min}\alpha$, the
    coefficients stay finite where $\alpha = 0$:
    $c_{skip} = \sigma_d^2 \alpha \alpha_{min}^3 / (\Delta^2 + \sigma_d^2\alpha^2\alpha_{min}^2)$,
    $c_{out} = \sigma_d \Delta / \sqrt{\sigma_d^2\alpha^2 + \sigma^2}$,
    $c_{in} = 1/\sqrt{\sigma_d^2\alpha^2 + \sigma^2}$ (unit-variance network input when the data
    have variance $\sigma_d^2$). For the VE schedule these are exactly Song et al.'s; for TrigFlow
    $c_{skip} = \cos t$ and $c_{out} = \sigma_d \sin t$.
    """

    sigma_data: RealScalarLike = eqx.field(default=0.5, converter=positive_field("sigma_data"))
    log_noise_clip: float = eqx.field(static=True, default=30.0, converter=static_positive_float("log_noise_clip"))

    def __call__(self, schedule: AbstractSchedule, t: ArrayLike) -> tuple[Array, Array, Array, Array]:
        t = jnp.asarray(t)
        a, s = schedule.alpha(t), schedule.sigma(t)
        a0, s0 = schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)
        sd = jnp.asarray(self.sigma_data, dtype=a.dtype)
        delta = s * a0 - s0 * a
        root = jnp.sqrt(sd**2 * a**2 + s**2)
        c_skip = sd**2 * a * a0**3 / (delta**2 + sd**2 * a**2 * a0**2)
        c_out = sd * delta / root
        c_in = 1.0 / root
        # log n is infinite at the ends of some schedules; the network sees a bounded input.
        c_noise = 0.25 * jnp.clip(schedule.log_noise(t), -self.log_noise_clip, self.log_noise_clip)
        return c_skip, c_out, c_in, c_noise


class TrigFlowScalings(AbstractScalings):
    r"""sCM's TrigFlow parametrization, $f(t, x) = \cos(t)\, x - \sin(t)\, \sigma_d F(x/\sigma_d, t)$,
    exact at $t = 0$; for the `TrigFlow` schedule only. `time_scale` multiplies the time fed to
    the network ($c_{noise} = $ `time_scale` $\cdot t$)."""

    sigma_data: RealScalarLike = eqx.field(default=0.5, converter=positive_field("sigma_data"))
    time_scale: RealScalarLike = eqx.field(default=1.0, converter=finite_field("time_scale"))

    def __call__(self, schedule: AbstractSchedule, t: ArrayLike) -> tuple[Array, Array, Array, Array]:
        if not isinstance(schedule, TrigFlow):
            raise TypeError(
                f"TrigFlowScalings needs a TrigFlow schedule, got {type(schedule).__name__}; use EDMScalings for other schedules."
            )
        t = jnp.asarray(t)
        sd = jnp.asarray(self.sigma_data, dtype=t.dtype)
        return jnp.cos(t), -sd * jnp.sin(t), 1.0 / sd * jnp.ones_like(t), jnp.asarray(self.time_scale * t)
