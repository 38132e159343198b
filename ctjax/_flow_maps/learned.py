r"""A learned flow map $X_\theta(s, t, x) = x + (t - s)\, u_\theta(s, t, x)$."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._custom_types import RealScalarLike
from .._misc import as_float_array, check_instance, check_time, positive_field
from .._nets.two_time import AbstractTwoTimeNetwork
from .._schedules import AbstractSchedule
from .base import AbstractFlowMap


def velocity_scalings(schedule: AbstractSchedule, sigma_data: ArrayLike, s: ArrayLike) -> tuple[Array, Array]:
    r"""$(c_{in}, c_{out})$ at time $s$: $c_{in} = 1/\sqrt{\sigma_d^2\alpha^2 + \sigma^2}$ gives the network
    a unit-variance input, $c_{out} = \sqrt{\sigma_d^2\dot\alpha^2 + \dot\sigma^2}$ is the scale of the
    conditional velocity $\dot\alpha x_0 + \dot\sigma z$ (1 for the variance-exploding schedule,
    $\sqrt{1 + \sigma_d^2}$ for the linear interpolant, $\sigma_d$ for TrigFlow)."""
    a, sig, da, dsig = schedule.coefficients(s)
    sd = jnp.asarray(sigma_data, a.dtype)
    return 1.0 / jnp.sqrt(sd**2 * a**2 + sig**2), jnp.sqrt(sd**2 * da**2 + dsig**2)


class FlowMap(AbstractFlowMap):
    r"""$X_\theta(s, t, x) = x + (t - s)\, u_\theta(s, t, x)$ with
    $u_\theta(s, t, x) = c_{out}(s)\, F_\theta(c_{in}(s)\, x,\ c(s),\ c(t))$ (`velocity_scalings`) and the
    network's times $c(t) = \text{time\_scale} \cdot (t - t_{min})/(t_{max} - t_{min})$, on any schedule.

    $X_\theta(s, s, x) = x$ holds exactly for any parameters. A fresh `TwoTimeMLP` (zero output layer)
    is the identity map.

    **Arguments:**

    - `net`: the two-time network $F_\theta$ (`TwoTimeMLP`).
    - `schedule`: the interpolant (MeanFlow's is `LinearInterpolant`).
    - `sigma_data`: the data's standard deviation (per coordinate).
    - `time_scale`: multiplies the normalised times the network sees.
    """

    net: AbstractTwoTimeNetwork
    schedule: AbstractSchedule
    sigma_data: RealScalarLike = eqx.field(default=0.5, converter=positive_field("sigma_data"))
    time_scale: RealScalarLike = eqx.field(default=1.0, converter=positive_field("time_scale"))

    def __check_init__(self):
        check_instance(self.net, AbstractTwoTimeNetwork, "net", "a two-time network (TwoTimeMLP)")
        check_instance(self.schedule, AbstractSchedule, "schedule", "a ctjax schedule")

    @property
    def dim(self) -> int:
        return self.net.dim

    def network_times(self, t: ArrayLike) -> Array:
        """The normalised time $c(t)$ the network sees."""
        t = jnp.asarray(t)
        lo, hi = (jnp.asarray(v, t.dtype) for v in (self.schedule.t_min, self.schedule.t_max))
        return jnp.asarray(self.time_scale, t.dtype) * (t - lo) / (hi - lo)

    def average_velocity(
        self, s: ArrayLike, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        x = as_float_array(x, "x")
        s, t = jnp.asarray(s).astype(x.dtype), jnp.asarray(t).astype(x.dtype)
        c_in, c_out = (c.astype(x.dtype) for c in velocity_scalings(self.schedule, self.sigma_data, s))
        return c_out * self.net(c_in * x, self.network_times(s), self.network_times(t), key=key)

    def __call__(
        self, s: ArrayLike, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        s = check_time(self.schedule, s, "s")
        t = check_time(self.schedule, t, "t")
        x = as_float_array(x, "x")
        s, t = s.astype(x.dtype), t.astype(x.dtype)
        return x + (t - s) * self.average_velocity(s, t, x, key=key)

    def trainable(self) -> PyTree[bool]:
        spec = jtu.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.net, spec, replace=jtu.tree_map(eqx.is_inexact_array, self.net))
