r"""Easy Consistency Tuning, ECT (Geng et al. 2024, "Consistency Models Made Easy").

Consistency training on the variance-exploding schedule in which the teacher's time $r$ shrinks
towards the student's time $t$ stage by stage, starting from the denoising (diffusion) loss:

$r = t\,\big(1 - q^{-(s + s_0)}\,(1 + k\,\mathrm{sigmoid}(-b t))\big)_+$, stage $s = \lfloor \text{step}/\text{steps\_per\_stage} \rfloor$,

and the loss $\big(\sqrt{\|f_\theta(t, x_0 + t\epsilon) - \mathrm{sg} f_\theta(r, x_0 + r\epsilon)\|^2 + c^2} - c\big)/(t - r)$,
with the target $x_0$ itself where $r \le t_{min}$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from .._consistency import AbstractConsistencyModel
from .._losses import AbstractDistance, L2, PseudoHuber
from .._misc import is_concrete
from .._schedules import VarianceExploding
from .base import AbstractTrainer
from .consistency import stop_gradient_model
from .curricula import check_p_std, lognormal_times
from .state import check_ema_rate, plain_init, plain_step, TrainState


def _check_ve_model(model) -> None:
    if not isinstance(model, AbstractConsistencyModel):
        raise TypeError(f"ECT needs a ctjax consistency model, got {type(model).__name__}.")
    if not isinstance(model.schedule, VarianceExploding):
        raise TypeError(
            f"ECT needs the variance-exploding (EDM) schedule, where time is the noise level; got "
            f"{type(model.schedule).__name__}."
        )


class ECTTrainer(AbstractTrainer):
    r"""Easy Consistency Tuning of a consistency model on the `VarianceExploding` schedule (a
    `ConsistencyFunction` with `EDMScalings`, whose boundary condition $f(t_{min}, x) = x$ is exact).
    Use the preset `ect`.

    Each step draws $t = e^{P_{std} n + P_{mean}}$, $n \sim N(0, 1)$ (clipped to the schedule's range),
    maps it to $r$ = `t_to_r(t, stage)`, and minimises the mean over examples of

    $d\big(f_\theta(t, x_0 + t\epsilon) - \mathrm{sg}\, f_\theta(r, x_0 + r\epsilon)\big)/(t - r)$

    with the same $\epsilon$ and the same dropout key in both evaluations, the target replaced by
    $x_0$ where $r \le t_{min}$, and $d$ the pseudo-Huber norm $\sqrt{\|\Delta\|^2 + c^2} - c$
    ($c = 0$: the $\ell_2$ norm, with gradient 0 rather than NaN at $\Delta = 0$). The teacher is the
    stop-gradient of the student (no EMA teacher); `ema_rate` drives the evaluation EMA.

    The stage is a traced function of the step: crossing stages does not recompile.

    **Initialisation from a diffusion model.** ECT tunes a pre-trained diffusion model: pass the
    result of `DenoisingTrainer` (or `diffusion_pretraining(optimizer, VarianceExploding())`, EDM's
    squared denoising loss) to `init`. With `stage_offset=0`, stage 0 has $r = 0$ for every $t$, so
    ECT's own first stage is a (norm, not squared) denoising loss: pre-training from scratch.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `steps_per_stage`: training steps per stage ($s \to s + 1$ every `steps_per_stage` steps).
    - `q`, `k`, `b`: the mapping $t \mapsto r$ (ECT CIFAR-10: 2, 8, 1).
    - `huber_c`: $c$ of the pseudo-Huber norm (ECT's default 0).
    - `p_mean`, `p_std`: the log-normal time proposal (ECT: -1.1, 2.0).
    - `stage_offset`: $s_0$ in the exponent $-(s + s_0)$: 1 as in ECT's code (`q ** (stage + 1)`),
      0 as in the paper's $q^{-a}$ (then stage 0 is pure denoising).
    - `ema_rate`: rate of the evaluation EMA (None: evaluate the trained model itself).
    """

    optimizer: optax.GradientTransformation
    steps_per_stage: int = eqx.field(static=True)
    q: float
    k: float
    b: float
    huber_c: float
    p_mean: float
    p_std: float
    stage_offset: int = eqx.field(static=True)
    ema_rate: float | None

    def __init__(
        self,
        optimizer: optax.GradientTransformation,
        steps_per_stage: int,
        *,
        q: float = 2.0,
        k: float = 8.0,
        b: float = 1.0,
        huber_c: float = 0.0,
        p_mean: float = -1.1,
        p_std: float = 2.0,
        stage_offset: int = 1,
        ema_rate: float | None = 0.999,
    ):
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
        if isinstance(steps_per_stage, bool) or int(steps_per_stage) != steps_per_stage or int(steps_per_stage) < 1:
            raise ValueError(f"`steps_per_stage` must be a positive integer, got {steps_per_stage!r}.")
        if is_concrete(q) and not float(q) > 1:
            raise ValueError(f"`q` must be > 1 (the gap t - r shrinks by 1/q per stage), got {q}.")
        if is_concrete(k) and not float(k) >= 0:
            raise ValueError(f"`k` must be non-negative, got {k}.")
        if is_concrete(huber_c) and not float(huber_c) >= 0:
            raise ValueError(f"`huber_c` must be non-negative, got {huber_c}.")
        check_p_std(p_std)
        if isinstance(stage_offset, bool) or int(stage_offset) != stage_offset or int(stage_offset) < 0:
            raise ValueError(f"`stage_offset` must be a non-negative integer, got {stage_offset!r}.")
        check_ema_rate(ema_rate)
        self.optimizer = optimizer
        self.steps_per_stage = int(steps_per_stage)
        self.q = q
        self.k = k
        self.b = b
        self.huber_c = huber_c
        self.p_mean = p_mean
        self.p_std = p_std
        self.stage_offset = int(stage_offset)
        self.ema_rate = ema_rate

    @property
    def distance(self) -> AbstractDistance:
        r"""The pseudo-Huber norm with constant `huber_c` ($\ell_2$ with a safe gradient for $c = 0$)."""
        if is_concrete(self.huber_c) and float(self.huber_c) == 0.0:
            return L2()
        return PseudoHuber(self.huber_c)

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
    ) -> tuple[Array, Array]:
        r"""(loss, residual) of one example: the residual $\Delta = f_\theta(t, x_0 + t\epsilon) - \text{target}$
        with target $\mathrm{sg} f_\theta(r, x_0 + r\epsilon)$ ($x_0$ where $r \le t_{min}$), and the loss
        $d(\Delta)/(t - r)$ (0 where $t - r$ is not positive). Both evaluations use `key`."""
        dtype = x0.dtype
        t = jnp.asarray(t).astype(dtype)
        r = jnp.asarray(r).astype(dtype)
        schedule = model.schedule
        t_min = jnp.asarray(schedule.t_min, dtype)
        student = model(t, x0 + t * eps, key=key)
        use_teacher = r > t_min
        teacher_out = stop_gradient_model(model)(jnp.maximum(r, t_min), x0 + r * eps, key=key)
        target = jnp.where(use_teacher, jax.lax.stop_gradient(teacher_out), x0)
        residual = student - target
        gap = t - r
        positive = gap > 0
        loss = jnp.where(positive, self.distance(residual) / jnp.where(positive, gap, 1.0), 0.0)
        return loss, residual

    def loss(
        self, model: AbstractConsistencyModel, batch: Array, step: ArrayLike, key: PRNGKeyArray
    ) -> tuple[Array, dict[str, Array]]:
        """The mean ECT loss over `batch` `(B, dim)` at training step `step` (which fixes the stage)."""
        _check_ve_model(model)
        schedule = model.schedule
        num_batch, dtype = batch.shape[0], batch.dtype
        k_time, k_noise, k_drop = jr.split(key, 3)
        t = lognormal_times(k_time, (num_batch,), schedule, self.p_mean, self.p_std, dtype)
        stage = self.stage(step)
        r = self.t_to_r(t, stage)
        eps = jr.normal(k_noise, batch.shape, dtype)
        losses, _ = jax.vmap(lambda t_, r_, x_, e_, k_: self.pair_loss(model, t_, r_, x_, e_, k_))(
            t, r, batch, eps, jr.split(k_drop, num_batch)
        )
        aux = {
            "stage": stage,
            "mean_ratio": jnp.mean(r / t),
            "denoising_fraction": jnp.mean((r <= jnp.asarray(schedule.t_min, dtype)).astype(dtype)),
        }
        return jnp.mean(losses), aux

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        """The initial state; `model` may be fresh or pre-trained (e.g. `DenoisingTrainer`'s result)."""
        _check_ve_model(model)
        return plain_init(self.optimizer, model, self.ema_rate, key)

    def step(self, state: TrainState, batch: Array, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        return plain_step(self.optimizer, state, lambda model: self.loss(model, batch, state.step, key), self.ema_rate)

    def result(self, state: TrainState) -> AbstractConsistencyModel:
        return state.model if state.ema is None else state.ema


def ect(
    optimizer: optax.GradientTransformation,
    total_steps: int,
    *,
    num_stages: int = 8,
    q: float = 2.0,
    k: float = 8.0,
    b: float = 1.0,
    huber_c: float = 0.0,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    stage_offset: int = 1,
    ema_rate: float | None = 0.999,
) -> ECTTrainer:
    r"""Geng et al.'s ECT with the CIFAR-10 settings of `locuslab/ect` (`run_ecm.sh`, `training/loss.py`):
    $q = 2$, $k = 8$, $b = 1$, $c = 0$, log-normal $t$ with $(-1.1, 2.0)$, and `num_stages` = 8 stages
    over the run (25.6 Mimg at `--double=250` ticks of 12.8 kimg), i.e. `steps_per_stage` =
    $\lceil$`total_steps`/`num_stages`$\rceil$; the exponent $-(s + 1)$ of the code (`stage_offset=1`)."""
    if int(total_steps) < 1 or int(num_stages) < 1:
        raise ValueError(f"`total_steps` and `num_stages` must be positive, got {total_steps}, {num_stages}.")
    steps_per_stage = -(-int(total_steps) // int(num_stages))
    return ECTTrainer(
        optimizer,
        steps_per_stage,
        q=q,
        k=k,
        b=b,
        huber_c=huber_c,
        p_mean=p_mean,
        p_std=p_std,
        stage_offset=stage_offset,
        ema_rate=ema_rate,
    )
