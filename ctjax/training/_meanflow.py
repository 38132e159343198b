r"""MeanFlow (Geng et al. 2025, arXiv 2505.13447): a flow map trained from scratch through the
MeanFlow identity, with no teacher and no pre-training.

The average velocity $u(s, t, x) = \tfrac{1}{t - s}\int_s^t v(\tau, x_\tau)\,d\tau$ of a trajectory through
$x = x_s$ satisfies, differentiating $(t - s)\, u = \int_s^t v$ in $s$ along the trajectory,

$u(s, t, x_s) = v(s, x_s) + (t - s)\, \tfrac{d}{ds} u(s, t, x_s)$, with
$\tfrac{d}{ds} u = \partial_s u + \nabla_x u\, v$

(MeanFlow's $u(z_t, r, t) = v - (t - r)\tfrac{d}{dt}u$ with its $(t, r)$ our $(s, t)$). MeanFlow regresses
$u_\theta$ onto the stop-gradient right-hand side, with the conditional velocity for $v$; the total
derivative is one `jax.jvp` with tangents $(1, v)$ in $(s, x)$.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, PRNGKeyArray

from .._custom_types import Batch, Velocity
from .._flow_maps import AbstractFlowMap
from .._misc import check_ema_rate, check_optimizer, check_p_std, finite_field, static_float_in
from ._base import AbstractEMATrainer, TrainState
from ._coupling import AbstractCoupling, check_coupling, Independent
from ._flow_map_draw import check_estimate, check_flow_map_model, check_weighting, flow_map_draw, non_negative_float
from ._pairing import check_velocity
from ._velocity_estimate import AbstractVelocityEstimate, OneSample


def adaptive_weights(sq: Array, power: float, eps: float) -> Array:
    r"""MeanFlow's adaptive loss weight $w = 1/(\|\Delta\|^2 + c)^p$ under stop-gradient ($p = 0$:
    the plain squared loss; $p = 1/2$: a pseudo-Huber-like loss; $p = 1$: close to the $\ell_1$-over-
    squared of a robust loss)."""
    if power == 0.0:
        return jnp.ones_like(sq)
    return jax.lax.stop_gradient(1.0 / (sq + jnp.asarray(eps, sq.dtype)) ** jnp.asarray(power, sq.dtype))


class MeanFlowTrainer(AbstractEMATrainer):
    r"""MeanFlow training of a flow map $X_\theta(s, t, x) = x + (t - s)\, u_\theta(s, t, x)$:

    $\mathcal{L} = E\, w\, \|u_\theta(s, t, x_s) - \mathrm{sg}(v + (t - s)(\partial_s u_\theta + \nabla_x u_\theta\, v))\|^2$

    over `time_pairs` $(s \ge t)$, $x_s = \alpha(s) x_0 + \sigma(s) z$, and $v$ the conditional velocity
    $\dot\alpha x_0 + \dot\sigma z$ (no teacher), a `velocity_estimate`'s, or a teacher's `velocity(s, x_s)`
    (then it distils the teacher's flow map). The diagonal pairs ($s = t$) are flow matching. The
    weight $w = 1/(\|\Delta\|^2 + c)^p$ is `adaptive_weights`.

    **Metrics:** `loss`, `grad_norm`, `residual` (the mean unweighted $\|\Delta\|^2$), `off_diagonal`
    (the fraction of pairs with $s \ne t$ in the batch).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `velocity`: None (MeanFlow, no teacher) or a per-example teacher `(t, x) -> dx/dt` on the flow
      map's schedule, e.g. `ExactVelocity(target, schedule)`.
    - `p_mean`, `p_std`: the log-normal noise-level proposal of both times (MeanFlow ImageNet: -0.4, 1.0,
      its logit-normal on the linear interpolant).
    - `ratio`: the fraction of pairs with $s \ne t$ (MeanFlow: 0.25).
    - `weighting_power`, `weighting_eps`: $p$ and $c$ of the adaptive weight (MeanFlow: 1.0, 1e-3).
    - `velocity_estimate`: `OneSample()` (the conditional velocity) or `ReferenceBatch(...)`; no teacher only.
    - `coupling`: `Independent()` or `MinibatchOT()`.
    - `ema_rate`: rate of the evaluation EMA (None: none).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    velocity: Velocity | None = eqx.field(
        default=None, converter=lambda v: check_velocity(v, allow_none=True, none_means="MeanFlow, no teacher")
    )
    p_mean: float = eqx.field(default=-0.4, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=1.0, converter=check_p_std)
    ratio: float = eqx.field(
        default=0.25,
        converter=static_float_in("ratio", 0.0, 1.0, "a fraction in [0, 1] (of pairs with s != t)"),
        static=True,
    )
    weighting_power: float = eqx.field(default=1.0, converter=non_negative_float("weighting_power"), static=True)
    weighting_eps: float = eqx.field(default=1e-3, converter=non_negative_float("weighting_eps"), static=True)
    velocity_estimate: AbstractVelocityEstimate = OneSample()
    coupling: AbstractCoupling = eqx.field(default=Independent(), converter=check_coupling)
    ema_rate: float | None = eqx.field(default=0.999, converter=check_ema_rate)

    def __check_init__(self):
        check_weighting(self.weighting_power, self.weighting_eps)
        check_estimate(self.velocity, self.velocity_estimate)

    def init(self, model: Any, *, key: PRNGKeyArray) -> TrainState:
        """The initial state for a flow map `model` (a TypeError for any other model)."""
        return self.initial_state(check_flow_map_model(model, self.velocity), key=key)  # pyright: ignore[reportArgumentType]

    def teacher_decay(self, step: Int[Array, ""]) -> None:
        return None

    def loss(
        self,
        model: AbstractFlowMap,
        extra: None,
        teacher: None,
        batch: Batch,
        step: Int[Array, ""],
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        """The mean MeanFlow loss over `batch` `(B, dim)`; no `extra` state, no stored `teacher`."""
        s, t, x_s, v, drop_keys = flow_map_draw(
            model,
            batch,
            key,
            p_mean=self.p_mean,
            p_std=self.p_std,
            ratio=self.ratio,
            velocity=self.velocity,
            velocity_estimate=self.velocity_estimate,
            coupling=self.coupling,
        )

        def per_example(s_, t_, x_, v_, k_):
            # d/ds u along the trajectory: one jvp in (s, x) with tangents (1, v); t is held fixed.
            u, du_ds = jax.jvp(lambda a, y: model.average_velocity(a, t_, y, key=k_), (s_, x_), (jnp.ones_like(s_), v_))
            target = jax.lax.stop_gradient(v_ + (t_ - s_) * du_ds)
            return jnp.sum((u - target) ** 2)

        sq = jax.vmap(per_example)(s, t, x_s, v, drop_keys)
        w = adaptive_weights(sq, self.weighting_power, self.weighting_eps)
        aux = {"residual": jnp.mean(jax.lax.stop_gradient(sq)), "off_diagonal": jnp.mean((s != t).astype(sq.dtype))}
        return jnp.mean(w * sq), aux


def meanflow(optimizer: optax.GradientTransformation, **kwargs: Any) -> MeanFlowTrainer:
    """MeanFlow with the paper's defaults and no teacher: `MeanFlowTrainer(optimizer, None, **kwargs)`."""
    if "velocity" in kwargs:
        raise TypeError("`meanflow` trains without a teacher; use MeanFlowTrainer(optimizer, velocity) to distil.")
    return MeanFlowTrainer(optimizer, None, **kwargs)
