r"""Easy Consistency Tuning, ECT (Geng et al. 2024, "Consistency Models Made Easy").

Consistency training on the variance-exploding schedule in which the teacher's time $r$ shrinks
towards the student's time $t$ stage by stage, starting from the denoising (diffusion) loss:

$r = t\,\big(1 - q^{-(s + s_0)}\,(1 + k\,\mathrm{sigmoid}(-b t))\big)_+$, stage $s = \lfloor \text{step}/\text{steps\_per\_stage} \rfloor$,

and the loss $\big(\sqrt{\|f_\theta(t, x_0 + t\epsilon) - \mathrm{sg} f_\theta(r, x_0 + r\epsilon)\|^2 + c^2} - c\big)/(t - r)$,
with the target $x_0$ itself where $r = 0$ (as in `locuslab/ect`'s `training/loss.py`).

Two things differ from the reference code and follow from ctjax's model rather than from ECT: the
network is a `ConsistencyFunction` with `EDMScalings`, whose $c_{skip}, c_{out}$ carry the
$\sigma_{min}$ offset that makes $f(t_{min}, x) = x$ exact (ECT's EDM network uses the offset-free
scalings and never evaluates $t < \sigma_{min}$), and times are clipped to the schedule's range
$[t_{min}, t_{max}]$ (0.002 and 80 for `VarianceExploding()`): a teacher time $0 < r < t_{min}$ is
evaluated at $t_{min}$, where the boundary condition gives $x_r$ itself.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from .._consistency import AbstractConsistencyModel
from .._custom_types import Batch
from .._losses import AbstractDistance, PseudoHuber
from .._misc import (
    check_ema_rate,
    check_instance,
    check_optimizer,
    check_p_std,
    check_value,
    finite,
    finite_field,
    int_field,
    non_negative_field,
    validate_int,
)
from .._schedules import VarianceExploding
from ._base import AbstractEMATrainer, stop_gradient_model, TrainState
from ._coupling import AbstractCoupling, check_coupling, Independent
from ._pairing import AbstractPairing, CoupledNoise
from ._time_sampling import lognormal_times
from ._velocity_estimate import AbstractVelocityEstimate, check_no_teacher_options, OneSample


def _check_ve_model(model) -> None:
    if not isinstance(model, AbstractConsistencyModel):
        raise TypeError(f"ECT needs a ctjax consistency model, got {type(model).__name__}.")
    if not isinstance(model.schedule, VarianceExploding):
        raise TypeError(
            f"ECT needs the variance-exploding (EDM) schedule, where time is the noise level; got "
            f"{type(model.schedule).__name__}."
        )


class ECTTrainer(AbstractEMATrainer):
    r"""Easy Consistency Tuning of a consistency model on the `VarianceExploding` schedule (a
    `ConsistencyFunction` with `EDMScalings`, whose boundary condition $f(t_{min}, x) = x$ is exact).
    Use the preset `ect`.

    Each step draws $t = e^{P_{std} n + P_{mean}}$, $n \sim N(0, 1)$ (clipped to the schedule's range),
    maps it to $r$ = `t_to_r(t, stage)`, and minimises the mean over examples of

    $d\big(f_\theta(t, x_0 + t\epsilon) - \mathrm{sg}\, f_\theta(r, x_0 + r\epsilon)\big)/(t - r)$

    with the same $\epsilon$ and the same dropout key in both evaluations, the target replaced by
    $x_0$ where $r = 0$ (a teacher time in $(0, t_{min}]$ is evaluated at $t_{min}$), and $d$ the pseudo-Huber norm $\sqrt{\|\Delta\|^2 + c^2} - c$
    ($c = 0$: the $\ell_2$ norm, with gradient 0 rather than NaN at $\Delta = 0$). The teacher is the
    stop-gradient of the student (no EMA teacher); `ema_rate` drives the evaluation EMA.

    The stage is a traced function of the step: crossing stages does not recompile.

    **Initialisation from a diffusion model.** ECT tunes a pre-trained diffusion model: pass the
    result of `DenoisingTrainer` (or `diffusion_pretraining(optimizer, VarianceExploding())`, EDM's
    squared denoising loss) to `init`. With `stage_offset=0`, stage 0 has $r = 0$ for every $t$, so
    ECT's own first stage is a (norm, not squared) denoising loss: pre-training from scratch.

    **Metrics:** `loss`, `grad_norm`, `stage` ($s$), `mean_ratio` (the mean $r/t$) and
    `denoising_fraction` (the fraction of examples with $r = 0$, whose target is $x_0$).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `steps_per_stage`: training steps per stage ($s \to s + 1$ every `steps_per_stage` steps).
    - `q`, `k`, `b`: the mapping $t \mapsto r$ (ECT CIFAR-10: 2, 8, 1).
    - `huber_c`: $c$ of the pseudo-Huber norm (ECT's default 0).
    - `p_mean`, `p_std`: the log-normal time proposal (ECT: -1.1, 2.0).
    - `stage_offset`: $s_0$ in the exponent $-(s + s_0)$: 1 as in ECT's code (`q ** (stage + 1)`),
      0 as in the paper's $q^{-a}$ (then stage 0 is pure denoising).
    - `pairing`: how the teacher's point at $r$ is built: `CoupledNoise()` ($x_0 + r\epsilon$, ECT's
      own, the default) or `ODEStep(velocity)` (one ODE step of a teacher velocity from $t$ to $r$).
    - `velocity_estimate`: `OneSample()` (ECT's $x_0 + r\epsilon$, the default) or `ReferenceBatch(...)`:
      the teacher's point $\hat x_0 + r\hat\epsilon$ and the denoising target $\hat x_0$ from the
      posterior mean over a reference set.
    - `coupling`: `Independent()` (the default) or `MinibatchOT()` (noise reordered to the data).
    - `distance`: None (the pseudo-Huber norm with `huber_c`, ECT's) or any distance, e.g. `SquaredL2()`.
    - `ema_rate`: rate of the evaluation EMA (None: evaluate the trained model itself).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    steps_per_stage: int = eqx.field(static=True, converter=int_field("steps_per_stage", 1))
    _: dataclasses.KW_ONLY
    q: float = eqx.field(
        default=2.0,
        converter=lambda q: check_value(
            q,
            lambda v: (v > 1) & finite(v),
            "`q` must be > 1 and finite (the gap t - r shrinks by 1/q per stage)",
        ),
    )
    k: float = eqx.field(default=8.0, converter=non_negative_field("k"))
    b: float = eqx.field(default=1.0, converter=finite_field("b"))
    huber_c: float = eqx.field(default=0.0, converter=non_negative_field("huber_c"))
    p_mean: float = eqx.field(default=-1.1, converter=finite_field("p_mean"))
    p_std: float = eqx.field(default=2.0, converter=check_p_std)
    stage_offset: int = eqx.field(static=True, default=1, converter=int_field("stage_offset", 0))
    pairing: AbstractPairing = CoupledNoise()
    ema_rate: float | None = eqx.field(default=0.999, converter=check_ema_rate)
    velocity_estimate: AbstractVelocityEstimate = OneSample()
    coupling: AbstractCoupling = eqx.field(default=Independent(), converter=check_coupling)
    distance: AbstractDistance | None = None

    def __check_init__(self):
        check_instance(self.pairing, AbstractPairing, "pairing", "CoupledNoise() or ODEStep(velocity)")
        if self.distance is not None:
            check_instance(
                self.distance, AbstractDistance, "distance", "None (pseudo-Huber with huber_c) or a distance"
            )
        check_no_teacher_options(self.velocity_estimate, self.pairing)

    @property
    def metric(self) -> AbstractDistance:
        r"""`distance`, or where it is None the pseudo-Huber norm with constant `huber_c` ($\ell_2$ with a
        safe gradient for $c = 0$)."""
        return PseudoHuber(self.huber_c) if self.distance is None else self.distance

    def stage(self, step: ArrayLike) -> Array:
        r"""$s = \lfloor \text{step}/\text{steps\_per\_stage} \rfloor$ (int32, traced)."""
        return (jnp.asarray(step) // self.steps_per_stage).astype(jnp.int32)

    def t_to_r(self, t: ArrayLike, stage: ArrayLike) -> Array:
        r"""ECT's sigmoid mapping $r = t\,(1 - q^{-(s + s_0)}(1 + k\,\mathrm{sigmoid}(-bt)))_+$, elementwise in `t`."""
        t = jnp.asarray(t)
        dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
        t = t.astype(dtype)
        exponent = (jnp.asarray(stage) + self.stage_offset).astype(dtype)
        decay = jnp.asarray(self.q, dtype) ** (-exponent)
        ratio = 1.0 - decay * (1.0 + jnp.asarray(self.k, dtype) * jax.nn.sigmoid(-jnp.asarray(self.b, dtype) * t))
        return jnp.maximum(t * ratio, 0.0)

    def pair_loss(
        self,
        model: AbstractConsistencyModel,
        t: ArrayLike,
        r: ArrayLike,
        x0: Array,
        eps: Array,
        key: PRNGKeyArray | None = None,
        x0_hat: Array | None = None,
        eps_hat: Array | None = None,
    ) -> tuple[Array, Array]:
        r"""(loss, residual) of one example.

        The residual is $\Delta = f_\theta(t, x_0 + t\epsilon) - \text{target}$ with target
        $\mathrm{sg} f_\theta(\max(r, t_{min}), x_r)$ ($x_r$ from `pairing`, $\hat x_0 + r\hat\epsilon$ by
        default), or $\hat x_0$ where $r = 0$; the loss is $d(\Delta)/(t - r)$ (0 where $t - r$ is not
        positive). $(\hat x_0, \hat\epsilon)$ default to $(x_0, \epsilon)$ (the one-sample estimate).
        Both evaluations use `key`."""
        dtype = x0.dtype
        t = jnp.asarray(t).astype(dtype)
        r = jnp.asarray(r).astype(dtype)
        schedule = model.schedule
        t_min = jnp.asarray(schedule.t_min, dtype)
        x_t = x0 + t * eps
        student = model(t, x_t, key=key)
        x0_hat = x0 if x0_hat is None else x0_hat
        eps_hat = eps if eps_hat is None else eps_hat
        # The reference uses the data as the target only at r = 0; a teacher time below t_min is
        # evaluated at t_min, where the boundary condition makes the model the identity.
        use_teacher = r > 0
        r_teacher = jnp.maximum(r, t_min)
        x_r = self.pairing.earlier(schedule, x0_hat, eps_hat, x_t, r_teacher, t)
        teacher_out = stop_gradient_model(model)(r_teacher, x_r, key=key)
        target = jnp.where(use_teacher, jax.lax.stop_gradient(teacher_out), x0_hat)
        residual = student - target
        gap = t - r
        positive = gap > 0
        loss = jnp.where(positive, self.metric(residual) / jnp.where(positive, gap, 1.0), 0.0)
        return loss, residual

    def loss(
        self,
        model: AbstractConsistencyModel,
        extra: None,
        teacher: None,
        batch: Batch,
        step: ArrayLike,
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        """The mean ECT loss over `batch` `(B, dim)` at training step `step` (which fixes the stage).
        The trainer keeps neither `extra` state nor a stored `teacher`."""
        schedule = model.schedule
        num_batch, dtype = batch.shape[0], batch.dtype
        k_time, k_noise, k_drop = jr.split(key, 3)
        t = lognormal_times(k_time, (num_batch,), schedule, self.p_mean, self.p_std, dtype)
        stage = self.stage(step)
        r = self.t_to_r(t, stage)
        eps = self.coupling.pair(batch, jr.normal(k_noise, batch.shape, dtype))
        x_t = batch + t[:, None] * eps
        x0_hat, eps_hat = self.velocity_estimate.estimate(schedule, t, x_t, batch, eps, key=jr.fold_in(key, 1))
        losses, _ = jax.vmap(lambda t_, r_, x_, e_, k_, xh_, eh_: self.pair_loss(model, t_, r_, x_, e_, k_, xh_, eh_))(
            t, r, batch, eps, jr.split(k_drop, num_batch), x0_hat, eps_hat
        )
        aux = {
            "stage": stage,
            "mean_ratio": jnp.mean(r / t),
            "denoising_fraction": jnp.mean((r <= 0).astype(dtype)),
        }
        return jnp.mean(losses), aux

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        """The initial state; `model` may be fresh or pre-trained (e.g. `DenoisingTrainer`'s result)."""
        _check_ve_model(model)
        return self.initial_state(model, key=key)

    def teacher_decay(self, step: Int[Array, ""]) -> None:
        return None


def ect(optimizer: optax.GradientTransformation, total_steps: int, *, num_stages: int = 8, **kwargs: Any) -> ECTTrainer:
    r"""Geng et al.'s ECT with the CIFAR-10 settings of `locuslab/ect` (`run_ecm.sh`, `training/loss.py`),
    which are `ECTTrainer`'s defaults ($q = 2$, $k = 8$, $b = 1$, $c = 0$, log-normal $t$ with
    $(-1.1, 2.0)$, the exponent $-(s + 1)$ of the code), and `num_stages` = 8 stages over the run
    (25.6 Mimg at `--double=250` ticks of 12.8 kimg): `steps_per_stage` =
    $\lceil$`total_steps`/`num_stages`$\rceil$. Other keyword arguments are the trainer's."""
    total_steps = validate_int(total_steps, "total_steps", 1)
    num_stages = validate_int(num_stages, "num_stages", 1)
    return ECTTrainer(optimizer, -(-total_steps // num_stages), **kwargs)
