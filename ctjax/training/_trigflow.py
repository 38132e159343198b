r"""TrigFlow maths shared by the sCM trainer and TrigFlow flow matching, per example unless stated.

With $x_t = \cos t\, x_0 + \sin t\, z$, $z \sim N(0, \sigma_d^2 I)$, and the consistency function
$f(t, x) = \cos t\, x - \sin t\, \sigma_d F(x/\sigma_d, t)$ (`TrigFlowScalings`).
"""

from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from .._consistency import ConsistencyFunction, TrigFlowScalings
from .._custom_types import RealScalarLike
from .._misc import check_values
from .._schedules import AbstractSchedule, TrigFlow
from ._base import stop_gradient_model
from ._pairing import check_velocity
from ._time_sampling import lognormal_times


NORMALISATIONS = ("normalise", "rms", "clip", "none")


def check_trigflow_model(model: Any) -> ConsistencyFunction:
    r"""`model`, checked: a `ConsistencyFunction` with `TrigFlowScalings` on a `TrigFlow` schedule with
    the same $\sigma_d$ (a TypeError or ValueError otherwise; traced $\sigma_d$ are compared at run time)."""
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
    return _same_sigma_data(
        model,
        ("the schedule's sigma_data", model.schedule.sigma_data),
        "The TrigFlow schedule's sigma_data and TrigFlowScalings' sigma_data must be equal",
    )


def _same_sigma_data(model: ConsistencyFunction, other: tuple[str, Any], message: str) -> ConsistencyFunction:
    r"""`model`, whose scalings' $\sigma_d$ must equal `other` = (its description, value): a ValueError at
    once, or where either is traced, a run-time error carried by the returned model's $\sigma_d$."""
    sigma_data = cast(TrigFlowScalings, model.scalings).sigma_data
    _, checked = check_values(
        (other[0], "the model's sigma_data"), (other[1], sigma_data), lambda a, b: a == b, message
    )
    return model if checked is sigma_data else eqx.tree_at(lambda m: m.scalings.sigma_data, model, checked)


def trigflow_sigma_data(model: ConsistencyFunction) -> RealScalarLike:
    r"""$\sigma_d$ of a TrigFlow consistency function (one that `check_trigflow_model` accepted)."""
    return cast(TrigFlowScalings, model.scalings).sigma_data


def check_trigflow_velocity(velocity: Any, model: ConsistencyFunction) -> ConsistencyFunction:
    r"""`model`, checked against a teacher velocity that visibly belongs to another interpolant: an
    `ExactVelocity` on a schedule other than `TrigFlow(sigma_data)`, or a `LearnedVelocity` with
    another $\sigma_d$ (its times would mean other noise levels). A ValueError at once, or where the
    $\sigma_d$ are traced, a run-time error carried by the returned model's $\sigma_d$."""
    check_velocity(velocity)
    schedule = getattr(velocity, "schedule", None)
    if isinstance(schedule, AbstractSchedule):
        if not isinstance(schedule, TrigFlow):
            raise ValueError(
                f"The teacher velocity is for a {type(schedule).__name__} schedule; sCD needs TrigFlow(sigma_data) times."
            )
        other = schedule.sigma_data
    else:
        other = getattr(velocity, "sigma_data", None)
    if other is None:
        return model
    return _same_sigma_data(
        model,
        ("the teacher velocity's sigma_data", other),
        "The teacher velocity and the model must use the same sigma_data: TrigFlow times would mean different "
        "noise levels",
    )


def trigflow_draw(
    model: ConsistencyFunction,
    batch: Array,
    key: PRNGKeyArray,
    p_mean: float,
    p_std: float,
    *,
    coupling: Any = None,
    velocity_estimate: Any = None,
) -> tuple[Array, Array, Array, Array]:
    r"""One batch of sCM's training draw: log-normal times `t` (`lognormal_times`), points
    $x_t = \cos t\, x_0 + \sin t\, z$ with their conditional velocities (`conditional_path`), and one
    dropout key per example. A `coupling` reorders the noise to the data first; a `velocity_estimate`
    replaces the velocity by $\cos t\, \hat z - \sin t\, \hat x_0$ of its $(\hat x_0, \hat z)$."""
    num_batch, dtype = batch.shape[0], batch.dtype
    k_time, k_noise, k_drop = jr.split(key, 3)
    t = lognormal_times(k_time, (num_batch,), model.schedule, p_mean, p_std, dtype)
    noise = jr.normal(k_noise, batch.shape, dtype)
    if coupling is not None:
        noise = coupling.pair(batch, noise)
    path = jax.vmap(conditional_path, in_axes=(None, 0, 0, 0))
    sigma_data = trigflow_sigma_data(model)
    x_t, dx_dt = path(sigma_data, batch, noise, t)
    if velocity_estimate is not None:
        x0_hat, noise_hat = velocity_estimate.estimate(model.schedule, t, x_t, batch, noise, key=jr.fold_in(key, 1))
        dx_dt = path(sigma_data, x0_hat, noise_hat, t)[1]
    return t, x_t, dx_dt, jr.split(k_drop, num_batch)


def conditional_path(sigma_data: RealScalarLike, x0: Array, noise: Array, t: Array) -> tuple[Array, Array]:
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
    r"""sCM's tangent normalisation $g/(\|g\| + c)$ (`"normalise"`), the dimension-free
    $g/(\mathrm{RMS}(g) + c)$ with $\mathrm{RMS}(g) = \|g\|/\sqrt{D}$ (`"rms"`, FastGen's
    `g_norm_spatial_invariance`), clipping to $[-1, 1]$ (`"clip"`), or nothing (`"none"`), for one
    example's tangent."""
    if method == "normalise":
        norm = jnp.sqrt(jnp.sum(g**2))
        return g / (norm + jnp.asarray(const, g.dtype))
    if method == "rms":
        rms = jnp.sqrt(jnp.mean(g**2))
        return g / (rms + jnp.asarray(const, g.dtype))
    if method == "clip":
        return jnp.clip(g, -1.0, 1.0)
    if method == "none":
        return g
    raise ValueError(f"`tangent_normalisation` must be one of {NORMALISATIONS}, got {method!r}.")


def adaptive_weighted_loss(residual_sq: ArrayLike, log_weight: ArrayLike) -> Array:
    r"""sCM's per-example loss $e^{w}\, m - w$ for the residual $m = \|F_\theta - F_\theta^- - g\|^2/D$ and
    log-weight $w$ (FastGen writes it with $\mathrm{logvar} = -w$). For fixed $m > 0$ its minimiser over
    $w$ is $w = -\log m$ (where $e^w m = 1$); $\theta$ sees the gradient of $m$ scaled by $e^w$."""
    m, w = jnp.asarray(residual_sq), jnp.asarray(log_weight)
    return jnp.exp(w) * m - w
