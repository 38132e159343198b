r"""Continuous-time consistency training and distillation, sCT and sCD (Lu and Song 2024), with
the TrigFlow parametrization.

With $x_t = \cos t\, x_0 + \sin t\, z$, $z \sim N(0, \sigma_d^2 I)$, and
$f_\theta(t, x) = \cos t\, x - \sin t\, \sigma_d F_\theta(x/\sigma_d, t)$, the time derivative of the
stop-gradient consistency function along a trajectory with velocity $dx_t/dt$ is

$\cos t\, \tfrac{d f^-}{dt} = -\cos^2 t\,(\sigma_d F^- - \tfrac{dx_t}{dt}) - \cos t \sin t\,(x_t + \sigma_d \tfrac{dF^-}{dt})$,

with $\tfrac{dF^-}{dt} = \nabla_x F^- \cdot \tfrac{dx_t}{dt}/\sigma_d + \partial_t F^-$ from one `jax.jvp`. sCM
minimises $E[e^{w(t)}/D\, \|F_\theta - F_\theta^- - g\|^2 - w(t)]$ where $g$ is that quantity with the
second term scaled by the warm-up ratio $r$ and then normalised; its gradient is
$-2 E[e^w/D\, g^\top \nabla_\theta F_\theta]$, the continuous-time limit of consistency training.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from .._consistency import AbstractConsistencyModel, ConsistencyFunction
from .._custom_types import Batch, DTypeLike, Velocity
from .._misc import (
    bool_field,
    check_ema_rate,
    check_optimizer,
    check_p_std,
    choice_field,
    finite_field,
    int_field,
    positive_field,
)
from .._nets.base import param_dtype
from ._adaptive_weighting import AdaptiveWeighting
from ._base import AbstractEMATrainer, TrainState
from ._coupling import AbstractCoupling, check_coupling, Independent
from ._pairing import check_velocity
from ._trigflow import (
    adaptive_weighted_loss,
    check_trigflow_model,
    check_trigflow_velocity,
    network_output,
    NORMALISATIONS,
    normalise_tangent,
    trigflow_draw,
    trigflow_sigma_data,
    trigflow_tangent,
)
from ._velocity_estimate import AbstractVelocityEstimate, check_velocity_estimate, OneSample


class Tangents(eqx.Module):
    """The per-example quantities of one sCM step (no gradient flows through any of them)."""

    t: Array
    """The times, shape `(B,)`."""
    x_t: Array
    """The noised points, `(B, dim)`."""
    dx_dt: Array
    """Their velocities: conditional (sCT) or the teacher's (sCD)."""
    F_minus: Array
    """The stop-gradient network output $F^-$."""
    g: Array
    """The raw tangent $g$."""
    g_normalised: Array
    """The normalised tangent."""
    r: Array
    """The warm-up ratio (a scalar)."""
    drop_keys: PRNGKeyArray
    """One dropout key per example."""


class ContinuousConsistencyTrainer(AbstractEMATrainer):
    r"""Continuous-time consistency training (sCT, `velocity=None`) and distillation (sCD) of a
    TrigFlow `ConsistencyFunction` (Lu and Song 2024). The presets `sct` and `scd` name the two.

    Each step draws $t = \arctan(e^\tau/\sigma_d)$, $\tau \sim N(P_{mean}, P_{std}^2)$, builds
    $x_t = \cos t\, x_0 + \sin t\, z$ and $\tfrac{dx_t}{dt}$ (the conditional velocity
    $\cos t\, z - \sin t\, x_0$ for sCT, the teacher's `velocity(t, x_t)` for sCD), computes the tangent
    $g$ of the stop-gradient model by one JVP with warm-up ratio $r = \min(1, k/K_{warm})$ at
    step $k$, normalises it, and minimises

    $E\big[e^{w_\phi(t)}/D\, \|F_\theta - \mathrm{sg}(F_\theta) - g\|^2 - w_\phi(t)\big]$

    over $\theta$ and the adaptive weighting $\phi$ jointly (one optimiser on the pair). There is no
    EMA teacher ($F^- = \mathrm{sg}(F_\theta)$); `ema_rate` drives only the evaluation EMA. Both
    network evaluations of an example share its dropout key.

    The tangent contains $\partial_t F$: give the network a time embedding that is smooth in $t$
    (e.g. `MLP(..., embedding="sinusoidal")`, sCM's positional embedding). High-frequency Fourier
    features make $dF/dt$ huge and training slow (docs/benchmarks.md has the measurement).

    The state's `extra` is the `AdaptiveWeighting` (None with `adaptive_weighting=False`), and the
    optimiser state is over `(model parameters, weighting)`. `result(state)` is the EMA
    consistency function (or the model when `ema_rate=None`).

    **Metrics:** `loss`, `grad_norm`, `warmup_ratio` ($r$), `tangent_norm` (the mean $\|g\|$ before
    normalisation), `residual` (the mean $\|F_\theta - F^- - g\|^2/D$) and `log_weight` (the mean $w_\phi$).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation` (it trains the model and the weighting).
    - `velocity`: None (sCT), or a per-example teacher `(t, x) -> dx/dt` in TrigFlow time (sCD):
      `ExactVelocity(target, TrigFlow(sigma_d))`, or `LearnedVelocity` of a flow-matching model.

    Keyword only:

    - `warmup_steps`: steps over which $r$ rises linearly from 0 to 1 (0: $r = 1$ at once;
      FastGen's default 10 000).
    - `tangent_normalisation`: `"normalise"` ($g/(\|g\| + c)$), `"rms"` ($g/(\|g\|/\sqrt{D} + c)$,
      FastGen's spatially invariant form), `"clip"` (to $[-1, 1]$) or `"none"`.
    - `normalisation_const`: $c$ (0.1).
    - `adaptive_weighting`: learn $w_\phi(t)$ (True) or use $w = 0$ (False).
    - `prior_weighting`: multiply each example's residual by the prior weight $1/(\sigma_d \tan t)$, one
      over its noise level (sCM's $\lambda(t)$), inside the adaptive loss: $e^{w}\lambda(t) m - w$.
    - `velocity_estimate` (sCT only): `OneSample()` (the conditional velocity, the default) or
      `ReferenceBatch(...)` ($\cos t\,\hat z - \sin t\,\hat x_0$ from the posterior mean over a
      reference set).
    - `coupling`: `Independent()` (the default) or `MinibatchOT()`.
    - `weighting_width`: hidden width (and number of Fourier features) of $w_\phi$.
    - `p_mean`, `p_std`: the time proposal (sCM CIFAR-10: -1.0, 1.4).
    - `ema_rate`: rate of the evaluation EMA (None: evaluate the trained model itself).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    velocity: Velocity | None = eqx.field(
        default=None, converter=lambda v: check_velocity(v, allow_none=True, none_means="sCT")
    )
    _: dataclasses.KW_ONLY
    warmup_steps: int = eqx.field(static=True, default=10_000, converter=int_field("warmup_steps", 0))
    tangent_normalisation: str = eqx.field(
        static=True, default="normalise", converter=choice_field("tangent_normalisation", NORMALISATIONS)
    )
    normalisation_const: float = eqx.field(default=0.1, converter=positive_field("normalisation_const"))
    adaptive_weighting: bool = eqx.field(static=True, default=True, converter=bool_field("adaptive_weighting"))
    weighting_width: int = eqx.field(static=True, default=32, converter=int_field("weighting_width", 1))
    p_mean: float = eqx.field(default=-1.0, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=1.4, converter=check_p_std)
    ema_rate: float | None = eqx.field(default=0.999, converter=check_ema_rate)
    prior_weighting: bool = eqx.field(static=True, default=False, converter=bool_field("prior_weighting"))
    velocity_estimate: AbstractVelocityEstimate = OneSample()
    coupling: AbstractCoupling = eqx.field(default=Independent(), converter=check_coupling)

    def __check_init__(self):
        check_velocity_estimate(self.velocity_estimate)
        if self.velocity is not None and not isinstance(self.velocity_estimate, OneSample):
            raise ValueError(
                "`velocity_estimate` replaces the teacher in sCT; sCD takes its velocity from the teacher. "
                "Use OneSample() with a teacher `velocity`, or velocity=None."
            )

    def warmup_ratio(self, step: ArrayLike, dtype: DTypeLike | None = None) -> Array:
        r"""$r(k) = \min(1, k/K_{warm})$: 0 at step 0, 1 from step `warmup_steps` on (traced `step`:
        no recompilation as it changes)."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        if self.warmup_steps == 0:
            return jnp.ones((), dtype)
        k = jnp.asarray(step).astype(dtype)
        return jnp.clip(k / self.warmup_steps, 0.0, 1.0)

    def init_weighting(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> AdaptiveWeighting | None:
        r"""A fresh $w_\phi$ ($\equiv 0$) in the model's parameter dtype, or None when turned off."""
        if not self.adaptive_weighting:
            return None
        width = self.weighting_width
        return AdaptiveWeighting(width, 2 * ((width + 1) // 2), key=key, dtype=param_dtype(model))

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        model = check_trigflow_model(model)
        if self.velocity is not None:
            model = check_trigflow_velocity(self.velocity, model)
        k_run, k_weighting = jr.split(key)
        return self.initial_state(model, key=k_run, extra=self.init_weighting(model, key=k_weighting))

    def teacher_decay(self, step: Int[Array, ""]) -> None:
        return None

    def tangents(self, model: ConsistencyFunction, batch: Batch, step: ArrayLike, key: PRNGKeyArray) -> Tangents:
        """The per-example quantities of one step at training step `step` (see `Tangents`)."""
        dtype = batch.dtype
        t, x_t, dx_dt, drop_keys = trigflow_draw(
            model,
            batch,
            key,
            self.p_mean,
            self.p_std,
            coupling=self.coupling,
            velocity_estimate=None if isinstance(self.velocity_estimate, OneSample) else self.velocity_estimate,
        )
        if self.velocity is not None:
            dx_dt = jax.lax.stop_gradient(jax.vmap(self.velocity)(t, x_t).astype(dtype))
        r = self.warmup_ratio(step, dtype)
        F_minus, g = jax.vmap(lambda t_, x_, v_, k_: trigflow_tangent(model, t_, x_, v_, r, key=k_))(
            t, x_t, dx_dt, drop_keys
        )
        const = jnp.asarray(self.normalisation_const, dtype)
        g_normalised = jax.vmap(lambda g_: normalise_tangent(g_, self.tangent_normalisation, const))(g)
        return Tangents(t, x_t, dx_dt, F_minus, g, g_normalised, r, drop_keys)

    def loss(
        self,
        model: ConsistencyFunction,
        extra: AdaptiveWeighting | None,
        teacher: None,
        batch: Batch,
        step: ArrayLike,
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        r"""The mean sCM loss over `batch` `(B, dim)` at training step `step` (for the warm-up);
        `extra` is the weighting $w_\phi$ (None: $w \equiv 0$); there is no stored `teacher`."""
        q = self.tangents(model, batch, step, key)
        F_theta = jax.vmap(lambda t_, x_, k_: network_output(model, t_, x_, key=k_))(q.t, q.x_t, q.drop_keys)
        residual = F_theta - jax.lax.stop_gradient(F_theta) - q.g_normalised
        sq = jnp.sum(residual**2, axis=-1) / batch.shape[-1]
        w = jnp.zeros_like(sq) if extra is None else jax.vmap(extra)(q.t).astype(sq.dtype)
        weighted = sq
        if self.prior_weighting:
            sd = jnp.asarray(trigflow_sigma_data(model), sq.dtype)
            # 1/noise level; the clamp keeps t = 0 (noise level 0) finite.
            weighted = sq / jnp.maximum(sd * jnp.tan(q.t), jnp.finfo(sq.dtype).tiny)
        per_example = adaptive_weighted_loss(weighted, w)
        aux = {
            "warmup_ratio": q.r,
            "tangent_norm": jnp.mean(jnp.sqrt(jnp.sum(q.g**2, axis=-1))),
            "residual": jnp.mean(jax.lax.stop_gradient(sq)),
            "log_weight": jnp.mean(jax.lax.stop_gradient(w)),
        }
        return jnp.mean(per_example), aux


def sct(optimizer: optax.GradientTransformation, **kwargs: Any) -> ContinuousConsistencyTrainer:
    r"""Lu and Song's continuous-time consistency training: `ContinuousConsistencyTrainer(optimizer)`,
    with the conditional velocity $\cos t\, z - \sin t\, x_0$ as $dx_t/dt$. Keyword arguments (the
    warm-up, normalisation, weighting, time proposal and EMA) are the trainer's."""
    if "velocity" in kwargs:
        raise TypeError("`sct` trains without a teacher; use `scd(optimizer, velocity)` for distillation.")
    return ContinuousConsistencyTrainer(optimizer, None, **kwargs)


def scd(optimizer: optax.GradientTransformation, velocity: Velocity, **kwargs: Any) -> ContinuousConsistencyTrainer:
    r"""Lu and Song's continuous-time consistency distillation: `ContinuousConsistencyTrainer(optimizer,
    velocity)` with $dx_t/dt$ = `velocity(t, x_t)`, a per-example teacher in TrigFlow time
    (`ExactVelocity(target, TrigFlow(sigma_d))`, or `LearnedVelocity.from_model(m)` for a model `m`
    trained by `FlowMatchingTrainer`). Keyword arguments are the trainer's."""
    if velocity is None:
        raise TypeError("`scd` needs a teacher `velocity`; use `sct` for consistency training.")
    return ContinuousConsistencyTrainer(optimizer, velocity, **kwargs)
