r"""Lagrangian and Eulerian flow-map distillation and self-distillation (Boffi, Albergo and
Vanden-Eijnden: flow map matching, arXiv 2406.07507; self-distillation, arXiv 2505.18825).

The exact flow map $\Phi_{s \to t}$ of a velocity $v$ is the solution of either equation

- Lagrangian: $\partial_t X(s, t, x) = v(t, X(s, t, x))$ (move the end along the trajectory);
- Eulerian: $\partial_s X(s, t, x) + \nabla_x X(s, t, x)\, v(s, x) = 0$ (move the start along it),

with $X(s, s, x) = x$, which $X_\theta = x + (t - s) u_\theta$ satisfies by construction. Distillation
takes $v$ from a teacher; self-distillation takes it from the flow map's own diagonal
$\hat v(t, x) = u_\theta(t, t, x)$ under stop-gradient, and learns that diagonal by flow matching
on the conditional velocity, so that it needs no teacher.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, PRNGKeyArray

from .._custom_types import Batch, Velocity
from .._flow_maps import AbstractFlowMap
from .._misc import check_ema_rate, check_optimizer, check_p_std, choice_field, finite_field
from ._base import AbstractEMATrainer, TrainState
from ._coupling import AbstractCoupling, check_coupling, Independent
from ._flow_map_draw import check_estimate, check_flow_map_model, check_weighting, flow_map_draw, non_negative_float
from ._meanflow import adaptive_weights
from ._pairing import check_velocity
from ._velocity_estimate import AbstractVelocityEstimate, OneSample


MODES = ("lagrangian", "eulerian")


class FlowMapDistillationTrainer(AbstractEMATrainer):
    r"""Flow-map distillation (a teacher `velocity`) or self-distillation (`velocity=None`):

    $\mathcal{L} = E\, w\|u_\theta(s, s, x_s) - v\|^2 + \lambda\, E\, w\|R_\theta(s, t, x_s)\|^2$

    with $x_s = \alpha(s) x_0 + \sigma(s) z$ and pairs $s \ge t$ from `time_pairs` (none set to the diagonal;
    $s = t$ only where both draws clip to an end of the schedule's range). The
    first term is flow matching of the diagonal, on the teacher's velocity or (no teacher) the
    conditional velocity $\dot\alpha x_0 + \dot\sigma z$ or a `velocity_estimate`'s. The residual:

    - `"lagrangian"`: $R = \partial_t X_\theta(s, t, x_s) - \hat v(t, \mathrm{sg}\,X_\theta(s, t, x_s))$;
    - `"eulerian"`: $R = \partial_s X_\theta(s, t, x_s) + \nabla_x X_\theta(s, t, x_s)\, \hat v(s, x_s)$
      (MeanFlow's residual with the gradient through $\tfrac{d}{ds}u_\theta$ kept),

    each a single `jax.jvp`, with $\hat v$ the teacher or $\mathrm{sg}\,u_\theta(\tau, \tau, \cdot)$. Boffi et
    al. found the Lagrangian form the more stable: the Eulerian residual differentiates the network
    in space.

    **Metrics:** `loss`, `grad_norm`, `diagonal` and `residual` (the two mean unweighted squared terms).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `mode`: `"lagrangian"` (default) or `"eulerian"`.
    - `velocity`: None (self-distillation, no teacher) or a per-example teacher `(t, x) -> dx/dt` on the
      flow map's schedule, e.g. `ExactVelocity(target, schedule)`.
    - `p_mean`, `p_std`: the log-normal noise-level proposal of both times.
    - `distillation_weight`: $\lambda$.
    - `weighting_power`, `weighting_eps`: the adaptive weight of each term (`adaptive_weights`; 0: none).
    - `velocity_estimate`, `coupling`: as for the other no-teacher trainers (no teacher only).
    - `ema_rate`: rate of the evaluation EMA (None: none).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    mode: str = eqx.field(default="lagrangian", converter=choice_field("mode", MODES), static=True)
    velocity: Velocity | None = eqx.field(
        default=None, converter=lambda v: check_velocity(v, allow_none=True, none_means="self-distillation")
    )
    p_mean: float = eqx.field(default=-0.4, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=1.0, converter=check_p_std)
    distillation_weight: float = eqx.field(
        default=1.0, converter=non_negative_float("distillation_weight"), static=True
    )
    weighting_power: float = eqx.field(default=0.0, converter=non_negative_float("weighting_power"), static=True)
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
        """The mean loss over `batch` `(B, dim)`; no `extra` state, no stored `teacher`."""
        s, t, x_s, v, drop_keys = flow_map_draw(
            model,
            batch,
            key,
            p_mean=self.p_mean,
            p_std=self.p_std,
            ratio=1.0,
            velocity=self.velocity,
            velocity_estimate=self.velocity_estimate,
            coupling=self.coupling,
        )
        frozen = jax.lax.stop_gradient(model)

        def v_hat(tau, x):
            if self.velocity is not None:
                return jax.lax.stop_gradient(self.velocity(tau, x).astype(x.dtype))
            return frozen.average_velocity(tau, tau, x)

        def per_example(s_, t_, x_, v_, k_):
            diagonal = jnp.sum((model.average_velocity(s_, s_, x_, key=k_) - v_) ** 2)

            def jump(a, b, y):
                return y + (b - a) * model.average_velocity(a, b, y, key=k_)

            if self.mode == "lagrangian":
                end, d_end = jax.jvp(lambda b: jump(s_, b, x_), (t_,), (jnp.ones_like(t_),))
                residual = d_end - v_hat(t_, jax.lax.stop_gradient(end))
            else:
                # With a teacher, v_ is already its velocity at (s, x_s): no second evaluation.
                tangent = v_ if self.velocity is not None else v_hat(s_, x_)
                _, residual = jax.jvp(lambda a, y: jump(a, t_, y), (s_, x_), (jnp.ones_like(s_), tangent))
            return diagonal, jnp.sum(residual**2)

        diagonal, residual = jax.vmap(per_example)(s, t, x_s, v, drop_keys)
        power, eps = self.weighting_power, self.weighting_eps
        total = adaptive_weights(diagonal, power, eps) * diagonal
        total = total + self.distillation_weight * adaptive_weights(residual, power, eps) * residual
        aux = {
            "diagonal": jnp.mean(jax.lax.stop_gradient(diagonal)),
            "residual": jnp.mean(jax.lax.stop_gradient(residual)),
        }
        return jnp.mean(total), aux
