"""Discrete-time consistency training and distillation (Song et al. 2023; Song and Dhariwal 2023)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, PRNGKeyArray

from .._consistency import AbstractConsistencyModel
from .._losses import (
    AbstractDistance,
    AbstractWeighting,
    InverseDeltaWeighting,
    PseudoHuber,
    SquaredL2,
    UniformWeighting,
)
from .base import AbstractTrainer
from .curricula import (
    AbstractCurriculum,
    AbstractGrid,
    AbstractIndexSampler,
    AbstractTeacher,
    AdaptiveEMATeacher,
    ConstantCurriculum,
    DiscreteLogNormal,
    DoublingCurriculum,
    EMATeacher,
    KarrasGrid,
    SqrtCurriculum,
    StopGradientTeacher,
    UniformIndex,
)
from .pairing import AbstractPairing, CoupledNoise, ODEStep
from .state import check_ema_rate, ema_update, gradient_step, partition_trainable, TrainState


def stop_gradient_model(model):
    """The model with gradients stopped on every array (a frozen teacher)."""
    arrays, rest = eqx.partition(model, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(arrays), rest)


class ConsistencyTrainer(AbstractTrainer):
    r"""Discrete-time consistency training (CT, iCT) and distillation (CD).

    Each step draws an interval $i$ of an $N(k)$-point grid, builds $x_{t_{i+1}} = \alpha x_0 + \sigma z$
    and the teacher's point $x_{t_i}$ (coupled noise for CT, an ODE step for CD), and minimises
    $\lambda(t_i)\, d(f_\theta(t_{i+1}, x_{t_{i+1}}), f_{\theta^-}(t_i, x_{t_i}))$. Student and teacher
    share the dropout key of each example. Use the presets `ct`, `ict` and `cd`.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `curriculum`: $N(k)$ (`SqrtCurriculum`, `DoublingCurriculum`, `ConstantCurriculum`).
    - `teacher`: `AdaptiveEMATeacher`, `EMATeacher` or `StopGradientTeacher`.
    - `grid`: the discretisation (`KarrasGrid` by default).
    - `distance`: `SquaredL2`, `L2` or `PseudoHuber`.
    - `weighting`: `UniformWeighting` or `InverseDeltaWeighting`.
    - `index_sampler`: `UniformIndex` or `DiscreteLogNormal`.
    - `pairing`: `CoupledNoise()` (training) or `ODEStep(velocity, method)` (distillation).
    - `ema_rate`: rate of the evaluation EMA of the parameters (None: evaluate the student).
    """

    optimizer: optax.GradientTransformation
    curriculum: AbstractCurriculum
    teacher: AbstractTeacher
    grid: AbstractGrid
    distance: AbstractDistance
    weighting: AbstractWeighting
    index_sampler: AbstractIndexSampler
    pairing: AbstractPairing
    ema_rate: float | None

    def __init__(
        self,
        optimizer: optax.GradientTransformation,
        curriculum: AbstractCurriculum,
        teacher: AbstractTeacher | None = None,
        grid: AbstractGrid | None = None,
        distance: AbstractDistance | None = None,
        weighting: AbstractWeighting | None = None,
        index_sampler: AbstractIndexSampler | None = None,
        pairing: AbstractPairing | None = None,
        ema_rate: float | None = 0.999,
    ):
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
        check_ema_rate(ema_rate)
        self.optimizer = optimizer
        self.curriculum = curriculum
        self.teacher = StopGradientTeacher() if teacher is None else teacher
        self.grid = KarrasGrid() if grid is None else grid
        self.distance = SquaredL2() if distance is None else distance
        self.weighting = UniformWeighting() if weighting is None else weighting
        self.index_sampler = UniformIndex() if index_sampler is None else index_sampler
        self.pairing = CoupledNoise() if pairing is None else pairing
        self.ema_rate = ema_rate

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        params, _ = partition_trainable(model)
        uses_ema_teacher = not isinstance(self.teacher, StopGradientTeacher)
        return TrainState(
            model=model,
            opt_state=self.optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            key=key,
            teacher=model if uses_ema_teacher else None,
            ema=model if self.ema_rate is not None else None,
        )

    def loss(self, model, teacher, batch: Array, step: Array, key: PRNGKeyArray) -> tuple[Array, dict[str, Array]]:
        r"""The mean loss over `batch` of shape `(B, dim)`; `teacher=None` means $\mathrm{sg}(\theta)$."""
        schedule = model.schedule
        num_batch, dtype = batch.shape[0], batch.dtype
        num = self.curriculum.num_scales(step)
        k_index, k_noise, k_drop = jr.split(key, 3)
        index = self.index_sampler.sample(k_index, (num_batch,), self.grid, schedule, num, self.curriculum.max_scales)
        t_lo = self.grid.time(schedule, index, num).astype(dtype)
        t_hi = self.grid.time(schedule, index + 1, num).astype(dtype)
        z = jr.normal(k_noise, batch.shape, dtype)
        a_hi = jax.vmap(schedule.alpha)(t_hi).astype(dtype)
        s_hi = jax.vmap(schedule.sigma)(t_hi).astype(dtype)
        x_hi = a_hi[:, None] * batch + s_hi[:, None] * z
        x_lo = jax.vmap(self.pairing.earlier, in_axes=(None, 0, 0, 0, 0, 0))(schedule, batch, z, x_hi, t_lo, t_hi)
        teacher = stop_gradient_model(model if teacher is None else teacher)
        drop_keys = jr.split(k_drop, num_batch)
        student_out = jax.vmap(lambda t, x, k: model(t, x, key=k))(t_hi, x_hi, drop_keys)
        teacher_out = jax.lax.stop_gradient(jax.vmap(lambda t, x, k: teacher(t, x, key=k))(t_lo, x_lo, drop_keys))
        weights = self.weighting(self.grid.noise(schedule, index, num), self.grid.noise(schedule, index + 1, num))
        per_example = jax.vmap(self.distance)(student_out - teacher_out) * weights.astype(dtype)
        return jnp.mean(per_example), {"num_scales": num}

    def step(self, state: TrainState, batch: Array, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        params, static = partition_trainable(state.model)

        def loss_fn(p):
            return self.loss(eqx.combine(p, static), state.teacher, batch, state.step, key)

        params, opt_state, loss, aux, grad_norm = gradient_step(self.optimizer, params, state.opt_state, loss_fn)
        model = eqx.combine(params, static)
        metrics = {"loss": loss, "grad_norm": grad_norm, "num_scales": aux["num_scales"]}
        teacher = state.teacher
        decay = self.teacher.decay(state.step, aux["num_scales"])
        if teacher is not None and decay is not None:
            teacher = _ema_model(teacher, params, decay)
            metrics["teacher_decay"] = decay
        ema = state.ema
        if ema is not None and self.ema_rate is not None:
            ema = _ema_model(ema, params, jnp.asarray(self.ema_rate, jnp.float32))
        new_state = TrainState(model, opt_state, state.step + 1, state.key, teacher, ema, state.extra)
        return new_state, metrics

    def result(self, state: TrainState) -> AbstractConsistencyModel:
        return state.model if state.ema is None else state.ema


def _ema_model(average_model, params, decay):
    avg_params, avg_static = partition_trainable(average_model)
    return eqx.combine(ema_update(avg_params, params, decay), avg_static)


# ---------------------------------------------------------------------------------------------
# Presets


def ct(
    optimizer: optax.GradientTransformation,
    total_steps: int,
    *,
    s0: int = 2,
    s1: int = 150,
    mu0: float = 0.9,
    mu_convention: str = "paper",
    distance: AbstractDistance | None = None,
    grid: AbstractGrid | None = None,
    ema_rate: float | None = 0.999,
) -> ConsistencyTrainer:
    r"""Song et al. (2023)'s consistency training: the $\sqrt{\cdot}$ curriculum $N(k)$ from $s_0$
    to $s_1 + 1$, an EMA teacher with $\mu(k) = \exp(s_0 \log\mu_0 / N(k))$, uniform intervals,
    $\lambda \equiv 1$, and $\ell_2^2$ (the paper's LPIPS has no meaning off images)."""
    return ConsistencyTrainer(
        optimizer,
        SqrtCurriculum(s0, s1, total_steps),
        teacher=AdaptiveEMATeacher(mu0, s0, mu_convention),
        grid=grid,
        distance=SquaredL2() if distance is None else distance,
        weighting=UniformWeighting(),
        index_sampler=UniformIndex(),
        ema_rate=ema_rate,
    )


def ict(
    optimizer: optax.GradientTransformation,
    total_steps: int,
    *,
    s0: int = 10,
    s1: int = 1280,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    huber_c: float | None = None,
    grid: AbstractGrid | None = None,
    ema_rate: float | None = 0.999,
) -> ConsistencyTrainer:
    r"""Song and Dhariwal (2023)'s improved consistency training: stop-gradient teacher, the
    doubling curriculum, discretised log-normal interval sampling, $\lambda = 1/(\sigma_{i+1} - \sigma_i)$,
    and pseudo-Huber with $c = 0.00054\sqrt{d}$ (or `huber_c`)."""
    return ConsistencyTrainer(
        optimizer,
        DoublingCurriculum(s0, s1, total_steps),
        teacher=StopGradientTeacher(),
        grid=grid,
        distance=PseudoHuber(huber_c),
        weighting=InverseDeltaWeighting(),
        index_sampler=DiscreteLogNormal(p_mean, p_std),
        ema_rate=ema_rate,
    )


def cd(
    optimizer: optax.GradientTransformation,
    velocity,
    *,
    num_scales: int = 18,
    mu: float = 0.95,
    method: str = "heun",
    distance: AbstractDistance | None = None,
    grid: AbstractGrid | None = None,
    ema_rate: float | None = 0.999,
) -> ConsistencyTrainer:
    r"""Song et al. (2023)'s consistency distillation: a fixed $N$-point grid, an EMA teacher with
    rate $\mu$, and the teacher's point from one Euler or Heun step of `velocity(t, x)`
    (`ExactVelocity(target, schedule)` for a perfect score)."""
    return ConsistencyTrainer(
        optimizer,
        ConstantCurriculum(num_scales),
        teacher=EMATeacher(mu),
        grid=grid,
        distance=SquaredL2() if distance is None else distance,
        weighting=UniformWeighting(),
        index_sampler=UniformIndex(),
        pairing=ODEStep(velocity, method),
        ema_rate=ema_rate,
    )
