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

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._consistency import AbstractConsistencyModel, ConsistencyFunction, TrigFlowScalings
from .._misc import is_concrete
from .._nets.base import init_layers, param_dtype, zero_layer
from .._nets.embeddings import FourierEmbedding
from .._schedules import AbstractSchedule, TrigFlow
from .base import AbstractTrainer
from .consistency import stop_gradient_model
from .curricula import check_p_std, lognormal_times
from .state import check_ema_rate, ema_update, gradient_step, partition_trainable, TrainState


_NORMALISATIONS = ("normalise", "clip", "none")


# ---------------------------------------------------------------------------------------------
# TrigFlow helpers (per example unless stated)


def check_trigflow_model(model: Any) -> None:
    r"""Raise a TypeError/ValueError unless `model` is a `ConsistencyFunction` with `TrigFlowScalings`
    on a `TrigFlow` schedule with the same $\sigma_d$."""
    if not isinstance(model, ConsistencyFunction):
        raise TypeError(
            f"sCM needs a ctjax.ConsistencyFunction with TrigFlowScalings on a TrigFlow schedule, got {type(model).__name__}."
        )
    if not isinstance(model.schedule, TrigFlow):
        raise TypeError(f"sCM needs a TrigFlow schedule, got {type(model.schedule).__name__}.")
    if not isinstance(model.scalings, TrigFlowScalings):
        raise TypeError(
            f"sCM needs TrigFlowScalings (f = cos t x - sin t sigma_d F), got {type(model.scalings).__name__}."
        )
    sd_sched, sd_scal = model.schedule.sigma_data, model.scalings.sigma_data
    if is_concrete((sd_sched, sd_scal)) and float(sd_sched) != float(sd_scal):
        raise ValueError(
            f"The TrigFlow schedule's sigma_data ({float(sd_sched)}) and TrigFlowScalings' sigma_data "
            f"({float(sd_scal)}) must be equal."
        )


def trigflow_sigma_data(model: ConsistencyFunction) -> Any:
    r"""$\sigma_d$ of a TrigFlow consistency function (checked by `check_trigflow_model`)."""
    check_trigflow_model(model)
    scalings = model.scalings
    assert isinstance(scalings, TrigFlowScalings)
    return scalings.sigma_data


def check_trigflow_velocity(velocity: Any, sigma_data: Any) -> None:
    r"""Raise a ValueError where a teacher velocity visibly belongs to another interpolant: an
    `ExactVelocity` on a schedule other than `TrigFlow(sigma_data)`, or a `LearnedVelocity` with
    another $\sigma_d$ (its times would mean other noise levels)."""
    if not callable(velocity):
        raise TypeError(f"`velocity` must be a callable (t, x) -> dx/dt, got {type(velocity).__name__}.")
    schedule = getattr(velocity, "schedule", None)
    if isinstance(schedule, AbstractSchedule):
        if not isinstance(schedule, TrigFlow):
            raise ValueError(
                f"The teacher velocity is for a {type(schedule).__name__} schedule; sCD needs TrigFlow(sigma_data) times."
            )
        other = schedule.sigma_data
    else:
        other = getattr(velocity, "sigma_data", None)
    if other is not None and is_concrete((other, sigma_data)) and float(other) != float(sigma_data):
        raise ValueError(
            f"The teacher velocity uses sigma_data={float(other)} but the model uses {float(sigma_data)}: "
            "TrigFlow times would mean different noise levels."
        )


def trigflow_draw(
    model: ConsistencyFunction, batch: Array, key: PRNGKeyArray, p_mean: float, p_std: float
) -> tuple[Array, Array, Array, Array]:
    r"""One batch of sCM's training draw: log-normal times `t` (`lognormal_times`), points
    $x_t = \cos t\, x_0 + \sin t\, z$ with their conditional velocities (`conditional_path`), and one
    dropout key per example."""
    num_batch, dtype = batch.shape[0], batch.dtype
    k_time, k_noise, k_drop = jr.split(key, 3)
    t = lognormal_times(k_time, (num_batch,), model.schedule, p_mean, p_std, dtype)
    noise = jr.normal(k_noise, batch.shape, dtype)
    x_t, dx_dt = jax.vmap(conditional_path, in_axes=(None, 0, 0, 0))(trigflow_sigma_data(model), batch, noise, t)
    return t, x_t, dx_dt, jr.split(k_drop, num_batch)


def conditional_path(sigma_data: Any, x0: Array, noise: Array, t: Array) -> tuple[Array, Array]:
    r"""$(x_t, \tfrac{dx_t}{dt})$ with $x_t = \cos t\, x_0 + \sin t\, z$, $z = \sigma_d\,$`noise`
    ($z \sim N(0, \sigma_d^2 I)$ for standard normal `noise`, as `TrigFlow`'s $\sigma(t) = \sigma_d \sin t$),
    and the conditional velocity $\cos t\, z - \sin t\, x_0$."""
    dtype = x0.dtype
    t = jnp.asarray(t).astype(dtype)
    z = jnp.asarray(sigma_data, dtype) * noise
    c, s = jnp.cos(t), jnp.sin(t)
    return c * x0 + s * z, c * z - s * x0


def network_output(model: ConsistencyFunction, t: ArrayLike, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
    r"""The raw network of a TrigFlow consistency function, $F(x/\sigma_d, c_{noise}(t))$."""
    t = jnp.asarray(t).astype(x.dtype)
    _, _, c_in, c_noise = model.scalings(model.schedule, t)
    return model.net(jnp.asarray(c_in).astype(x.dtype) * x, jnp.asarray(c_noise).astype(x.dtype), key=key)


def trigflow_jvp(
    model: ConsistencyFunction, t: ArrayLike, x_t: Array, dx_dt: Array, *, key: PRNGKeyArray | None = None
) -> tuple[Array, Array]:
    r"""$(F(x_t/\sigma_d, t),\ \cos t \sin t\, \tfrac{dF}{dt})$ by ONE `jax.jvp`, with FastGen's
    rearranged tangents $(\cos t \sin t\, \tfrac{dx_t}{dt},\ \cos t \sin t)$ (for $(x_t, t)$; the network
    sees $x_t/\sigma_d$, so its input tangent is $\cos t \sin t\, \tfrac{dx_t}{dt}/\sigma_d$). The factor
    $\cos t \sin t$ is applied to the (bounded) tangents, never to a possibly huge $dF/dt$.
    Dropout uses `key`, the same mask as any other evaluation with that key."""
    t = jnp.asarray(t).astype(x_t.dtype)
    cs = jnp.cos(t) * jnp.sin(t)
    return jax.jvp(lambda x, s: network_output(model, s, x, key=key), (x_t, t), (cs * dx_dt, cs))


def trigflow_tangent(
    model: ConsistencyFunction,
    t: ArrayLike,
    x_t: Array,
    dx_dt: Array,
    warmup_ratio: ArrayLike = 1.0,
    *,
    key: PRNGKeyArray | None = None,
) -> tuple[Array, Array]:
    r"""$(F^-, g)$ for the stop-gradient model, with the un-normalised sCM tangent

    $g = -\cos^2 t\,(\sigma_d F^- - \tfrac{dx_t}{dt}) - r\,(\cos t \sin t\, x_t + \sigma_d \cos t \sin t\, \tfrac{dF^-}{dt})$.

    With $r = 1$, $g = \cos t\, \tfrac{d}{dt} f^-(t, x_t)$ along the path with velocity `dx_dt`."""
    model = stop_gradient_model(model)
    dtype = x_t.dtype
    t = jnp.asarray(t).astype(dtype)
    F, dF = trigflow_jvp(model, t, x_t, dx_dt, key=key)
    sd = jnp.asarray(trigflow_sigma_data(model), dtype)
    c, s = jnp.cos(t), jnp.sin(t)
    r = jnp.asarray(warmup_ratio).astype(dtype)
    g = -(c * c) * (sd * F - dx_dt) - r * (c * s * x_t + sd * dF)
    return jax.lax.stop_gradient(F), jax.lax.stop_gradient(g)


def normalise_tangent(g: Array, method: str = "normalise", const: ArrayLike = 0.1) -> Array:
    r"""sCM's tangent normalisation $g/(\|g\| + c)$ (`"normalise"`), clipping to $[-1, 1]$ (`"clip"`), or
    nothing (`"none"`), for one example's tangent."""
    if method == "normalise":
        norm = jnp.sqrt(jnp.sum(g**2))
        return g / (norm + jnp.asarray(const, g.dtype))
    if method == "clip":
        return jnp.clip(g, -1.0, 1.0)
    if method == "none":
        return g
    raise ValueError(f"`tangent_normalisation` must be one of {_NORMALISATIONS}, got {method!r}.")


def adaptive_weighted_loss(residual_sq: ArrayLike, log_weight: ArrayLike) -> Array:
    r"""sCM's per-example loss $e^{w}\, m - w$ for the residual $m = \|F_\theta - F_\theta^- - g\|^2/D$ and
    log-weight $w$ (FastGen writes it with $\mathrm{logvar} = -w$). For fixed $m > 0$ its minimiser over
    $w$ is $w = -\log m$ (where $e^w m = 1$); $\theta$ sees the gradient of $m$ scaled by $e^w$."""
    m, w = jnp.asarray(residual_sq), jnp.asarray(log_weight)
    return jnp.exp(w) * m - w


# ---------------------------------------------------------------------------------------------
# The adaptive weighting


class AdaptiveWeighting(eqx.Module):
    r"""sCM's learned log-weight $w_\phi(t)$: random Fourier features of $t$, one hidden SiLU layer,
    and a scalar output layer that starts at zero (so $w \equiv 0$ at initialisation).

    Trained jointly with the model on $e^{w}\, m - w$ for the residual $m$, whose minimiser over
    $w$ is $-\log E[m \mid t]$: $e^{-w}$ tracks the residual's scale per time (FastGen's `logvar` $= -w$).
    """

    embedding: FourierEmbedding
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(
        self,
        width: int = 32,
        num_features: int = 32,
        embedding_scale: float = 1.0,
        *,
        key: PRNGKeyArray,
        dtype=None,
    ):
        r"""**Arguments:**

        - `width`: hidden width.
        - `num_features`: number of Fourier features of $t$ (even).
        - `embedding_scale`: standard deviation of the Fourier frequencies (in cycles per unit of
          $t \in [0, \pi/2]$; 1 gives smooth functions of $t$).
        - `key`: PRNG key of the initial parameters.
        - `dtype`: parameter dtype.
        """
        self.embedding = FourierEmbedding(num_features, scale=embedding_scale)
        hidden, out = init_layers(
            lambda k: (
                eqx.nn.Linear(num_features, int(width), dtype=dtype, key=jr.fold_in(k, 0)),
                eqx.nn.Linear(int(width), "scalar", dtype=dtype, key=jr.fold_in(k, 1)),
            ),
            key,
        )
        self.hidden = hidden
        self.out = zero_layer(out)

    def __call__(self, t: ArrayLike) -> Float[Array, ""]:
        r"""$w_\phi(t)$ for a scalar `t`, in the parameters' dtype."""
        dtype = self.hidden.weight.dtype
        emb = self.embedding(jnp.asarray(t)).astype(dtype)
        return self.out(jax.nn.silu(self.hidden(emb)))


# ---------------------------------------------------------------------------------------------
# The trainer


class ContinuousConsistencyTrainer(AbstractTrainer):
    r"""Continuous-time consistency training (sCT, `velocity=None`) and distillation (sCD) of a
    TrigFlow `ConsistencyFunction` (Lu and Song 2024). Use the presets `sct` and `scd`.

    Each step draws $t = \arctan(e^\tau/\sigma_d)$, $\tau \sim N(P_{mean}, P_{std}^2)$, builds
    $x_t = \cos t\, x_0 + \sin t\, z$ and $\tfrac{dx_t}{dt}$ (the conditional velocity
    $\cos t\, z - \sin t\, x_0$ for sCT, the teacher's `velocity(t, x_t)` for sCD), computes the tangent
    $g$ of the stop-gradient model by one JVP (`trigflow_tangent`) with warm-up ratio
    $r = \min(1, k/K_{warm})$ at step $k$, normalises it, and minimises

    $E\big[e^{w_\phi(t)}/D\, \|F_\theta - \mathrm{sg}(F_\theta) - g\|^2 - w_\phi(t)\big]$

    over $\theta$ and the adaptive weighting $\phi$ jointly (one optimiser on the pair). There is no
    EMA teacher ($F^- = \mathrm{sg}(F_\theta)$); `ema_rate` drives only the evaluation EMA. Both
    network evaluations of an example share its dropout key.

    The tangent contains $\partial_t F$: give the network a time embedding that is smooth in $t$
    (e.g. `MLP(..., embedding="sinusoidal")`, sCM's positional embedding). Fourier features of
    scale 16 make $dF/dt$ huge: on the 2-D mixture of `benchmarks/quality_gmm.py`, sCT reached a
    1-step $W_1$ of 28 times the sample floor after 8300 steps with them, 3.4 times after 3000 steps
    with the sinusoidal embedding.

    The state's `extra` is `{"weighting": AdaptiveWeighting}` (None with `adaptive_weighting=False`),
    and the optimiser state is over `(model parameters, weighting)`. `result(state)` is the EMA
    consistency function (or the model when `ema_rate=None`).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation` (it trains the model and the weighting).
    - `velocity`: None (sCT), or a per-example teacher `(t, x) -> dx/dt` in TrigFlow time (sCD):
      `ExactVelocity(target, TrigFlow(sigma_d))`, or `LearnedVelocity` of a flow-matching model.
    - `warmup_steps`: steps over which $r$ rises linearly from 0 to 1 (0: $r = 1$ at once;
      FastGen's default 10 000).
    - `tangent_normalisation`: `"normalise"` ($g/(\|g\| + c)$), `"clip"` (to $[-1, 1]$) or `"none"`.
    - `normalisation_const`: $c$ (0.1).
    - `adaptive_weighting`: learn $w_\phi(t)$ (True) or use $w = 0$ (False).
    - `weighting_width`: hidden width (and number of Fourier features) of $w_\phi$.
    - `p_mean`, `p_std`: the time proposal (sCM CIFAR-10: -1.0, 1.4).
    - `ema_rate`: rate of the evaluation EMA (None: evaluate the trained model itself).
    """

    optimizer: optax.GradientTransformation
    velocity: Callable[[Array, Array], Array] | None
    warmup_steps: int = eqx.field(static=True)
    tangent_normalisation: str = eqx.field(static=True)
    normalisation_const: float
    adaptive_weighting: bool = eqx.field(static=True)
    weighting_width: int = eqx.field(static=True)
    p_mean: float
    p_std: float
    ema_rate: float | None

    def __init__(
        self,
        optimizer: optax.GradientTransformation,
        velocity: Callable[[Array, Array], Array] | None = None,
        *,
        warmup_steps: int = 10_000,
        tangent_normalisation: str = "normalise",
        normalisation_const: float = 0.1,
        adaptive_weighting: bool = True,
        weighting_width: int = 32,
        p_mean: float = -1.0,
        p_std: float = 1.4,
        ema_rate: float | None = 0.999,
    ):
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
        if velocity is not None and not callable(velocity):
            raise TypeError(
                f"`velocity` must be None (sCT) or a callable (t, x) -> dx/dt, got {type(velocity).__name__}."
            )
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or int(warmup_steps) < 0:
            raise ValueError(f"`warmup_steps` must be a non-negative integer, got {warmup_steps!r}.")
        if tangent_normalisation not in _NORMALISATIONS:
            raise ValueError(
                f"`tangent_normalisation` must be one of {_NORMALISATIONS}, got {tangent_normalisation!r}."
            )
        if is_concrete(normalisation_const) and not float(normalisation_const) > 0:
            raise ValueError(f"`normalisation_const` must be positive, got {normalisation_const}.")
        check_p_std(p_std)
        check_ema_rate(ema_rate)
        if int(weighting_width) < 1:
            raise ValueError(f"`weighting_width` must be a positive integer, got {weighting_width}.")
        self.optimizer = optimizer
        self.velocity = velocity
        self.warmup_steps = int(warmup_steps)
        self.tangent_normalisation = tangent_normalisation
        self.normalisation_const = normalisation_const
        self.adaptive_weighting = bool(adaptive_weighting)
        self.weighting_width = int(weighting_width)
        self.p_mean = p_mean
        self.p_std = p_std
        self.ema_rate = ema_rate

    def warmup_ratio(self, step: ArrayLike, dtype=None) -> Array:
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
        check_trigflow_model(model)
        assert isinstance(model, ConsistencyFunction)
        if self.velocity is not None:
            check_trigflow_velocity(self.velocity, trigflow_sigma_data(model))
        k_run, k_weighting = jr.split(key)
        weighting = self.init_weighting(model, key=k_weighting)
        params, _ = partition_trainable(model)
        trainable: Any = (params, weighting)
        return TrainState(
            model=model,
            opt_state=self.optimizer.init(trainable),
            step=jnp.zeros((), jnp.int32),
            key=k_run,
            ema=model if self.ema_rate is not None else None,
            extra=None if weighting is None else {"weighting": weighting},
        )

    def tangents(
        self, model: ConsistencyFunction, batch: Array, step: ArrayLike, key: PRNGKeyArray
    ) -> dict[str, Array]:
        """The per-example quantities of one step (no gradient flows through any of them):
        times `t`, points `x_t`, velocities `dx_dt`, the stop-gradient `F_minus`, the raw tangent `g`,
        its normalised version `g_normalised`, the warm-up ratio `r` and the dropout keys `drop_keys`."""
        sd = trigflow_sigma_data(model)
        dtype = batch.dtype
        t, x_t, dx_dt, drop_keys = trigflow_draw(model, batch, key, self.p_mean, self.p_std)
        if self.velocity is not None:
            check_trigflow_velocity(self.velocity, sd)
            dx_dt = jax.lax.stop_gradient(jax.vmap(self.velocity)(t, x_t).astype(dtype))
        r = self.warmup_ratio(step, dtype)
        F_minus, g = jax.vmap(lambda t_, x_, v_, k_: trigflow_tangent(model, t_, x_, v_, r, key=k_))(
            t, x_t, dx_dt, drop_keys
        )
        const = jnp.asarray(self.normalisation_const, dtype)
        g_normalised = jax.vmap(lambda g_: normalise_tangent(g_, self.tangent_normalisation, const))(g)
        return {
            "t": t,
            "x_t": x_t,
            "dx_dt": dx_dt,
            "F_minus": F_minus,
            "g": g,
            "g_normalised": g_normalised,
            "r": r,
            "drop_keys": drop_keys,
        }

    def loss(
        self,
        model: ConsistencyFunction,
        weighting: AdaptiveWeighting | None,
        batch: Array,
        step: ArrayLike,
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        r"""The mean sCM loss over `batch` `(B, dim)` at training step `step` (for the warm-up);
        `weighting=None` means $w \equiv 0$."""
        q = self.tangents(model, batch, step, key)
        F_theta = jax.vmap(lambda t_, x_, k_: network_output(model, t_, x_, key=k_))(q["t"], q["x_t"], q["drop_keys"])
        residual = F_theta - jax.lax.stop_gradient(F_theta) - q["g_normalised"]
        sq = jnp.sum(residual**2, axis=-1) / batch.shape[-1]
        if weighting is None:
            w = jnp.zeros_like(sq)
        else:
            w = jax.vmap(weighting)(q["t"]).astype(sq.dtype)
        per_example = adaptive_weighted_loss(sq, w)
        aux = {
            "warmup_ratio": q["r"],
            "tangent_norm": jnp.mean(jnp.sqrt(jnp.sum(q["g"] ** 2, axis=-1))),
            "residual": jnp.mean(jax.lax.stop_gradient(sq)),
            "log_weight": jnp.mean(jax.lax.stop_gradient(w)),
        }
        return jnp.mean(per_example), aux

    def step(self, state: TrainState, batch: Array, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        params, static = partition_trainable(state.model)
        weighting = None if state.extra is None else state.extra["weighting"]

        def loss_fn(p):
            model_params, w = p
            return self.loss(eqx.combine(model_params, static), w, batch, state.step, key)

        (params, weighting), opt_state, loss, aux, grad_norm = gradient_step(
            self.optimizer, (params, weighting), state.opt_state, loss_fn
        )
        model = eqx.combine(params, static)
        ema = state.ema
        if ema is not None and self.ema_rate is not None:
            ema_params, ema_static = partition_trainable(ema)
            ema = eqx.combine(ema_update(ema_params, params, jnp.asarray(self.ema_rate, jnp.float32)), ema_static)
        extra = None if weighting is None else {"weighting": weighting}
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
        return TrainState(model, opt_state, state.step + 1, state.key, None, ema, extra), metrics

    def result(self, state: TrainState) -> ConsistencyFunction:
        return state.model if state.ema is None else state.ema


# ---------------------------------------------------------------------------------------------
# Presets


def sct(
    optimizer: optax.GradientTransformation,
    *,
    warmup_steps: int = 10_000,
    tangent_normalisation: str = "normalise",
    normalisation_const: float = 0.1,
    adaptive_weighting: bool = True,
    weighting_width: int = 32,
    p_mean: float = -1.0,
    p_std: float = 1.4,
    ema_rate: float | None = 0.999,
) -> ContinuousConsistencyTrainer:
    r"""Lu and Song's continuous-time consistency training: the conditional velocity
    $\cos t\, z - \sin t\, x_0$ as $dx_t/dt$, tangent warm-up over `warmup_steps` (FastGen: 10 000),
    $g/(\|g\| + 0.1)$, a learned $w_\phi(t)$, and the CIFAR-10 time proposal $(-1.0, 1.4)$."""
    return ContinuousConsistencyTrainer(
        optimizer,
        None,
        warmup_steps=warmup_steps,
        tangent_normalisation=tangent_normalisation,
        normalisation_const=normalisation_const,
        adaptive_weighting=adaptive_weighting,
        weighting_width=weighting_width,
        p_mean=p_mean,
        p_std=p_std,
        ema_rate=ema_rate,
    )


def scd(
    optimizer: optax.GradientTransformation,
    velocity: Callable[[Array, Array], Array],
    *,
    warmup_steps: int = 10_000,
    tangent_normalisation: str = "normalise",
    normalisation_const: float = 0.1,
    adaptive_weighting: bool = True,
    weighting_width: int = 32,
    p_mean: float = -1.0,
    p_std: float = 1.4,
    ema_rate: float | None = 0.999,
) -> ContinuousConsistencyTrainer:
    """Lu and Song's continuous-time consistency distillation: $dx_t/dt$ = `velocity(t, x_t)`, a
    per-example teacher in TrigFlow time (`ExactVelocity(target, TrigFlow(sigma_d))`, or
    `LearnedVelocity.from_model(m)` for a model `m` trained by `FlowMatchingTrainer`); otherwise as `sct`."""
    if velocity is None:
        raise TypeError("`scd` needs a teacher `velocity`; use `sct` for consistency training.")
    return ContinuousConsistencyTrainer(
        optimizer,
        velocity,
        warmup_steps=warmup_steps,
        tangent_normalisation=tangent_normalisation,
        normalisation_const=normalisation_const,
        adaptive_weighting=adaptive_weighting,
        weighting_width=weighting_width,
        p_mean=p_mean,
        p_std=p_std,
        ema_rate=ema_rate,
    )
