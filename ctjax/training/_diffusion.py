r"""Diffusion pre-training: TrigFlow flow matching (the sCM teacher and starting point) and EDM
denoising (ECT's starting point), both for a `ConsistencyFunction`.

Both train the consistency function's own network so that $f(t, x)$ becomes the denoiser
$E[x_0 \mid x_t = x]$:

- TrigFlow: $f = \cos t\, x - \sin t\, \sigma_d F$ and $x_0 = \cos t\, x_t - \sin t\, \tfrac{dx_t}{dt}$, so
  $\|f - x_0\|^2 = \sin^2 t\, \|\sigma_d F - \tfrac{dx_t}{dt}\|^2$: flow matching of $\sigma_d F$ is denoising
  with EDM's weight $1/(\sigma_d^2 \sin^2 t)$, and $\sigma_d F(x/\sigma_d, t)$ is then the probability-flow
  velocity (`LearnedVelocity`), the sCD teacher.
- Any schedule (VE for ECT): EDM's loss $\lambda(n)\, \|f(t, x_t) - x_0\|^2$ with
  $\lambda(n) = (n^2 + \sigma_d^2)/(n \sigma_d)^2$ at noise level $n = \sigma(t)/\alpha(t)$.

The trained model (`trainer.result(state)`) can be passed straight to `ECTTrainer.init`,
`ContinuousConsistencyTrainer.init` or wrapped as a teacher.
"""

import abc
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._consistency import AbstractConsistencyModel, ConsistencyFunction, EDMScalings, TrigFlowScalings
from .._custom_types import Batch, RealScalarLike
from .._misc import check_ema_rate, check_instance, check_optimizer, check_p_std, finite_field, positive_field
from .._nets import AbstractNetwork
from .._schedules import AbstractSchedule, TrigFlow
from ._base import AbstractEMATrainer, TrainState
from ._time_sampling import lognormal_times
from ._trigflow import check_trigflow_model, network_output, trigflow_draw, trigflow_sigma_data


class LearnedVelocity(eqx.Module):
    r"""The probability-flow velocity of a TrigFlow flow-matching network,
    $\tfrac{dx}{dt} = \sigma_d F(x/\sigma_d,\ \text{time\_scale} \cdot t)$, per example: `(t, x) -> dx/dt`.

    Use it as the sCD teacher (`scd(optimizer, LearnedVelocity.from_model(pretrained))`) or with
    `ODEStep` for discrete distillation on the TrigFlow schedule. Its output is the network's
    (gradients are stopped by the trainers that use it as a teacher).
    """

    net: AbstractNetwork
    sigma_data: RealScalarLike = eqx.field(default=0.5, converter=positive_field("sigma_data"))
    time_scale: RealScalarLike = eqx.field(default=1.0, converter=finite_field("time_scale"))

    def __check_init__(self):
        check_instance(self.net, AbstractNetwork, "net", "a ctjax network (an AbstractNetwork)")

    @classmethod
    def from_model(cls, model: ConsistencyFunction) -> "LearnedVelocity":
        r"""The velocity of a TrigFlow `ConsistencyFunction`'s network (same $\sigma_d$ and time scale)."""
        model = check_trigflow_model(model)
        scalings = cast(TrigFlowScalings, model.scalings)
        return cls(model.net, scalings.sigma_data, scalings.time_scale)

    def __call__(self, t: ArrayLike, x: ArrayLike) -> Float[Array, " dim"]:
        x = jnp.asarray(x)
        t = jnp.asarray(t).astype(x.dtype)
        sd = jnp.asarray(self.sigma_data, x.dtype)
        return sd * self.net(x / sd, jnp.asarray(self.time_scale, x.dtype) * t)


class AbstractPretrainingTrainer(AbstractEMATrainer):
    """A diffusion pre-training trainer: no teacher and no extra state, and a loss of the model and
    the batch alone (the training step does not enter it)."""

    @abc.abstractmethod
    def pretraining_loss(
        self, model: ConsistencyFunction, batch: Batch, key: PRNGKeyArray
    ) -> tuple[Array, dict[str, Array]]:
        """The mean loss over `batch` `(B, dim)`."""

    def teacher_decay(self, step: Int[Array, ""]) -> None:
        return None

    def loss(
        self,
        model: ConsistencyFunction,
        extra: None,
        teacher: None,
        batch: Batch,
        step: Int[Array, ""],
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        """`pretraining_loss(model, batch, key)`; there is no `extra` state, no `teacher`, and `step` is unused."""
        return self.pretraining_loss(model, batch, key)


class FlowMatchingTrainer(AbstractPretrainingTrainer):
    r"""TrigFlow flow matching (sCM's diffusion pre-training) of a TrigFlow `ConsistencyFunction`:

    $E\,\|\sigma_d F_\theta(x_t/\sigma_d, t) - \tfrac{dx_t}{dt}\|^2$, with $x_t = \cos t\, x_0 + \sin t\, z$,
    the conditional velocity $\tfrac{dx_t}{dt} = \cos t\, z - \sin t\, x_0$ and sCM's time proposal
    $t = \arctan(e^\tau/\sigma_d)$, $\tau \sim N(P_{mean}, P_{std}^2)$.

    Afterwards `LearnedVelocity.from_model(trainer.result(state))` is the learned probability-flow
    velocity (the sCD teacher), and the model itself (a denoiser-shaped consistency function) is the
    usual initialisation for sCT/sCD.

    **Metrics:** `loss`, `grad_norm`.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `p_mean`, `p_std`: the time proposal (sCM CIFAR-10: -1.0, 1.4).
    - `ema_rate`: rate of the evaluation EMA (None: none).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    p_mean: float = eqx.field(default=-1.0, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=1.4, converter=check_p_std)
    ema_rate: float | None = eqx.field(default=0.999, converter=check_ema_rate)

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        return self.initial_state(check_trigflow_model(model), key=key)

    def pretraining_loss(
        self, model: ConsistencyFunction, batch: Batch, key: PRNGKeyArray
    ) -> tuple[Array, dict[str, Array]]:
        """The mean flow-matching loss over `batch` `(B, dim)`."""
        sd = trigflow_sigma_data(model)
        t, x_t, dx_dt, drop_keys = trigflow_draw(model, batch, key, self.p_mean, self.p_std)
        F = jax.vmap(lambda t_, x_, k_: network_output(model, t_, x_, key=k_))(t, x_t, drop_keys)
        per_example = jnp.sum((jnp.asarray(sd, batch.dtype) * F - dx_dt) ** 2, axis=-1)
        return jnp.mean(per_example), {}


class DenoisingTrainer(AbstractPretrainingTrainer):
    r"""EDM denoising pre-training of a `ConsistencyFunction` on any schedule (ECT's starting point
    on the variance-exploding one):

    $E\,\lambda(n)\, \|f_\theta(t, \alpha x_0 + \sigma \epsilon) - x_0\|^2$, $\lambda(n) = (n^2 + \sigma_d^2)/(n\sigma_d)^2$,
    with noise level $n = \sigma(t)/\alpha(t)$ log-normal, $\log n \sim N(P_{mean}, P_{std}^2)$ (EDM: -1.2, 1.2),
    mapped to time by the schedule and clipped to its range; $\sigma_d$ is the scalings' `sigma_data`.
    The minimiser is $f(t, x) = E[x_0 \mid x_t = x]$ (away from `t_min`, where $f$ is pinned to $x$).

    On TrigFlow with `TrigFlowScalings` this loss is $1/\sigma_d^2$ times `FlowMatchingTrainer`'s.
    (ECT's own stage 0 with `stage_offset=0` is a denoising loss too, but on the norm
    $\|f - x_0\|/t$, whose minimiser is a conditional geometric median rather than the posterior
    mean; this trainer is EDM's squared loss, as in the checkpoints ECT starts from.)

    **Metrics:** `loss`, `grad_norm`.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `p_mean`, `p_std`: the log-normal noise levels (EDM: -1.2, 1.2).
    - `ema_rate`: rate of the evaluation EMA (None: none).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    p_mean: float = eqx.field(default=-1.2, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=1.2, converter=check_p_std)
    ema_rate: float | None = eqx.field(default=0.999, converter=check_ema_rate)

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        if not isinstance(model, ConsistencyFunction):
            raise TypeError(f"DenoisingTrainer needs a ctjax.ConsistencyFunction, got {type(model).__name__}.")
        if not isinstance(model.scalings, (EDMScalings, TrigFlowScalings)):
            raise TypeError(
                f"DenoisingTrainer needs EDMScalings or TrigFlowScalings, got {type(model.scalings).__name__}."
            )
        return self.initial_state(model, key=key)

    def pretraining_loss(
        self, model: ConsistencyFunction, batch: Batch, key: PRNGKeyArray
    ) -> tuple[Array, dict[str, Array]]:
        """The mean denoising loss over `batch` `(B, dim)`."""
        schedule: AbstractSchedule = model.schedule
        num_batch, dtype = batch.shape[0], batch.dtype
        k_time, k_noise, k_drop = jr.split(key, 3)
        t = lognormal_times(k_time, (num_batch,), schedule, self.p_mean, self.p_std, dtype)
        a = jax.vmap(schedule.alpha)(t).astype(dtype)
        s = jax.vmap(schedule.sigma)(t).astype(dtype)
        eps = jr.normal(k_noise, batch.shape, dtype)
        x_t = a[:, None] * batch + s[:, None] * eps
        f = jax.vmap(lambda t_, x_, k_: model(t_, x_, key=k_))(t, x_t, jr.split(k_drop, num_batch))
        sd = jnp.asarray(cast(EDMScalings | TrigFlowScalings, model.scalings).sigma_data, dtype)
        # lambda(n) = 1/n^2 + 1/sd^2 with n = s/a, written to stay finite where a = 0.
        weight = (a / s) ** 2 + 1.0 / sd**2
        per_example = weight * jnp.sum((f - batch) ** 2, axis=-1)
        return jnp.mean(per_example), {}


def diffusion_pretraining(
    optimizer: optax.GradientTransformation,
    schedule: AbstractSchedule,
    *,
    p_mean: float | None = None,
    p_std: float | None = None,
    ema_rate: float | None = 0.999,
) -> FlowMatchingTrainer | DenoisingTrainer:
    """The diffusion pre-training for `schedule`: `FlowMatchingTrainer` (sCM's time proposal
    -1.0, 1.4) for `TrigFlow`, `DenoisingTrainer` (EDM's -1.2, 1.2) otherwise. Its result
    initialises sCT/sCD or ECT (`ect(...).init(trainer.result(state), key=...)`)."""
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(f"`schedule` must be a ctjax schedule, got {type(schedule).__name__}.")
    trigflow = isinstance(schedule, TrigFlow)
    mean = (-1.0 if trigflow else -1.2) if p_mean is None else p_mean
    std = (1.4 if trigflow else 1.2) if p_std is None else p_std
    if trigflow:
        return FlowMatchingTrainer(optimizer, p_mean=mean, p_std=std, ema_rate=ema_rate)
    return DenoisingTrainer(optimizer, p_mean=mean, p_std=std, ema_rate=ema_rate)
