r"""The exact flow map $\Phi_{s \to t}$ of a target, as a flow map."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._flow import flow_map, gaussian_flow_map, velocity
from .._misc import as_float_array, check_instance, check_time
from .._schedules import AbstractSchedule
from .._targets import AbstractTarget, Gaussian
from .base import AbstractFlowMap


class ExactFlowMap(AbstractFlowMap):
    r"""$X^\star(s, t, x) = \Phi_{s \to t}(x)$: closed form for a `Gaussian` target, Diffrax otherwise
    (`ctjax.flow_map` at tolerances `rtol`, `atol`). Its average velocity is
    $(\Phi_{s \to t}(x) - x)/(t - s)$, and the exact velocity on the diagonal.

    The ground truth of every learned flow map, and a perfect teacher.
    """

    target: AbstractTarget
    schedule: AbstractSchedule
    rtol: float = eqx.field(static=True, default=1e-8)
    atol: float = eqx.field(static=True, default=1e-8)

    def __check_init__(self):
        check_instance(self.target, AbstractTarget, "target", "a ctjax target")
        check_instance(self.schedule, AbstractSchedule, "schedule", "a ctjax schedule")

    @property
    def dim(self) -> int:
        return self.target.dim

    def trainable(self) -> PyTree[bool]:
        return jtu.tree_map(lambda _: False, self)

    def _map(self, s, t, x):
        if isinstance(self.target, Gaussian):
            return gaussian_flow_map(self.target, self.schedule, x, s, t)
        return flow_map(self.target, self.schedule, x, s, t, rtol=self.rtol, atol=self.atol)

    def average_velocity(
        self, s: ArrayLike, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        del key
        x = as_float_array(x, "x")
        s, t = jnp.asarray(s).astype(x.dtype), jnp.asarray(t).astype(x.dtype)
        gap = t - s
        # Both branches are computed; dividing by a safe gap keeps the unused one (and its gradients) finite.
        # On the diagonal the value is the velocity, exact, but its partial derivatives in s and t are not
        # u's (the total derivative along the diagonal is); every loss multiplies them by t - s = 0 there.
        safe = jnp.where(gap == 0, 1.0, gap)
        jump = (self._map(s, t, x) - x) / safe
        return jnp.where(gap == 0, velocity(self.target, self.schedule, s, x), jump)

    def __call__(
        self, s: ArrayLike, t: ArrayLike, x: ArrayLike, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " dim"]:
        del key
        s = check_time(self.schedule, s, "s")
        t = check_time(self.schedule, t, "t")
        x = as_float_array(x, "x")
        return self._map(s, t, x)
