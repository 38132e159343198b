"""Discrete-time consistency training and distillation (Song et al. 2023; Song and Dhariwal 2023)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Int, PRNGKeyArray

from .._consistency import AbstractConsistencyModel
from .._custom_types import Batch, Velocity
from .._losses import (
    AbstractDistance,
    AbstractWeighting,
    InverseDeltaWeighting,
    PseudoHuber,
    SquaredL2,
    UniformWeighting,
)
from .._misc import check_ema_rate, check_instance, check_optimizer
from ._base import AbstractEMATrainer, stop_gradient_model, TrainState
from ._coupling import AbstractCoupling, check_coupling, Independent
from ._curricula import AbstractCurriculum, ConstantCurriculum, DoublingCurriculum, SqrtCurriculum
from ._grids import AbstractGrid, KarrasGrid
from ._index_sampling import AbstractIndexSampler, DiscreteLogNormal, UniformIndex
from ._pairing import AbstractPairing, CoupledNoise, ODEStep
from ._teachers import AbstractTeacher, AdaptiveEMATeacher, EMATeacher, StopGradientTeacher
from ._velocity_estimate import AbstractVelocityEstimate, check_no_teacher_options, OneSample


class ConsistencyTrainer(AbstractEMATrainer):
    r"""Discrete-time consistency training (CT, iCT) and distillation (CD).

    Each step draws an interval $i$ of an $N(k)$-point grid, builds $x_{t_{i+1}} = \alpha x_0 + \sigma z$
    and the teacher's point $x_{t_i}$ (coupled noise for CT, an ODE step for CD), and minimises
    $\lambda(t_i)\, d(f_\theta(t_{i+1}, x_{t_{i+1}}), f_{\theta^-}(t_i, x_{t_i}))$. Student and teacher
    share the dropout key of each example. The presets `ct`, `ict` and `cd` choose the components.

    The state keeps a teacher copy where `teacher` is an EMA teacher (`teacher.decay` is not None).

    **Metrics:** `loss`, `grad_norm`, `num_scales` ($N(k)$) and, with an EMA teacher, `teacher_decay` ($\mu(k)$).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `curriculum`: $N(k)$ (`SqrtCurriculum`, `DoublingCurriculum`, `ConstantCurriculum`).
    - `teacher`: `AdaptiveEMATeacher`, `EMATeacher` or `StopGradientTeacher` (the default).
    - `grid`: the discretisation (`KarrasGrid()` by default).
    - `distance`: `SquaredL2()` (the default), `L2()` or `PseudoHuber(c)`.
    - `weighting`: `UniformWeighting()` (the default) or `InverseDeltaWeighting()`.
    - `index_sampler`: `UniformIndex()` (the default) or `DiscreteLogNormal(p_mean, p_std)`.
    - `pairing`: how the teacher's point is built: `CoupledNoise()` (training, the default) or
      `ODEStep(velocity, method)` (distillation).
    - `velocity_estimate`: how training without a teacher estimates the velocity that builds the
      teacher's point: `OneSample()` (the generating $x_0$, the default) or `ReferenceBatch(...)` (the
      posterior mean over a reference set). Training only (`CoupledNoise`).
    - `coupling`: how the noise is paired with the data: `Independent()` (the default) or `MinibatchOT()`.
    - `ema_rate`: rate of the evaluation EMA of the parameters (None: evaluate the student).
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    curriculum: AbstractCurriculum
    teacher: AbstractTeacher = StopGradientTeacher()
    grid: AbstractGrid = KarrasGrid()
    distance: AbstractDistance = SquaredL2()
    weighting: AbstractWeighting = UniformWeighting()
    index_sampler: AbstractIndexSampler = UniformIndex()
    pairing: AbstractPairing = CoupledNoise()
    ema_rate: float | None = eqx.field(default=0.999, converter=check_ema_rate)
    velocity_estimate: AbstractVelocityEstimate = eqx.field(default=OneSample(), kw_only=True)
    coupling: AbstractCoupling = eqx.field(default=Independent(), converter=check_coupling, kw_only=True)

    def __check_init__(self):
        check_no_teacher_options(self.velocity_estimate, self.pairing)
        check_instance(self.curriculum, AbstractCurriculum, "curriculum", "a curriculum such as SqrtCurriculum")
        check_instance(self.teacher, AbstractTeacher, "teacher", "a teacher such as StopGradientTeacher()")
        check_instance(self.grid, AbstractGrid, "grid", "a grid such as KarrasGrid()")
        check_instance(self.distance, AbstractDistance, "distance", "a distance such as SquaredL2()")
        check_instance(self.weighting, AbstractWeighting, "weighting", "a weighting such as UniformWeighting()")
        check_instance(self.index_sampler, AbstractIndexSampler, "index_sampler", "a sampler such as UniformIndex()")
        check_instance(self.pairing, AbstractPairing, "pairing", "CoupledNoise() or ODEStep(velocity)")

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        check_instance(model, AbstractConsistencyModel, "model", "a ctjax consistency model")
        # A stored teacher exactly where the step updates one (any teacher whose `decay` is a rate).
        uses_ema_teacher = self.teacher_decay(jnp.zeros((), jnp.int32)) is not None
        return self.initial_state(model, key=key, teacher=model if uses_ema_teacher else None)

    def teacher_decay(self, step: Int[Array, ""]) -> Array | None:
        return self.teacher.decay(step, self.curriculum.num_scales(step))

    def loss(
        self,
        model: AbstractConsistencyModel,
        extra: None,
        teacher: AbstractConsistencyModel | None,
        batch: Batch,
        step: Array,
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        r"""The mean loss over `batch` of shape `(B, dim)`; `teacher=None` means $\mathrm{sg}(\theta)$.
        The trainer keeps no `extra` state."""
        schedule = model.schedule
        num_batch, dtype = batch.shape[0], batch.dtype
        num = self.curriculum.num_scales(step)
        k_index, k_noise, k_drop = jr.split(key, 3)
        index = self.index_sampler.sample(k_index, (num_batch,), self.grid, schedule, num, self.curriculum.max_scales)
        t_lo = self.grid.time(schedule, index, num).astype(dtype)
        t_hi = self.grid.time(schedule, index + 1, num).astype(dtype)
        z = self.coupling.pair(batch, jr.normal(k_noise, batch.shape, dtype))
        a_hi = jax.vmap(schedule.alpha)(t_hi).astype(dtype)
        s_hi = jax.vmap(schedule.sigma)(t_hi).astype(dtype)
        x_hi = a_hi[:, None] * batch + s_hi[:, None] * z
        # A key of its own (fold_in) leaves the draws above as they were before estimates existed.
        x0_hat, z_hat = self.velocity_estimate.estimate(schedule, t_hi, x_hi, batch, z, key=jr.fold_in(key, 1))
        x_lo = jax.vmap(self.pairing.earlier, in_axes=(None, 0, 0, 0, 0, 0))(schedule, x0_hat, z_hat, x_hi, t_lo, t_hi)
        frozen = stop_gradient_model(model if teacher is None else teacher)
        drop_keys = jr.split(k_drop, num_batch)
        student_out = jax.vmap(lambda t, x, k: model(t, x, key=k))(t_hi, x_hi, drop_keys)
        teacher_out = jax.lax.stop_gradient(jax.vmap(lambda t, x, k: frozen(t, x, key=k))(t_lo, x_lo, drop_keys))
        weights = self.weighting(self.grid.noise(schedule, index, num), self.grid.noise(schedule, index + 1, num))
        per_example = jax.vmap(self.distance)(student_out - teacher_out) * weights.astype(dtype)
        return jnp.mean(per_example), {"num_scales": num}


def ct(
    optimizer: optax.GradientTransformation,
    total_steps: int,
    *,
    s0: int = 2,
    s1: int = 150,
    mu0: float = 0.9,
    mu_convention: str = "paper",
    distance: AbstractDistance = SquaredL2(),
    grid: AbstractGrid = KarrasGrid(),
    ema_rate: float | None = 0.999,
    velocity_estimate: AbstractVelocityEstimate = OneSample(),
    coupling: AbstractCoupling = Independent(),
) -> ConsistencyTrainer:
    r"""Song et al. (2023)'s consistency training: the $\sqrt{\cdot}$ curriculum $N(k)$ from $s_0$
    to $s_1 + 1$, an EMA teacher with $\mu(k) = \exp(s_0 \log\mu_0 / N(k))$, uniform intervals,
    $\lambda \equiv 1$, and $\ell_2^2$ (the paper's LPIPS has no meaning off images). The paper's
    one-sample velocity and independent noise are the defaults of `velocity_estimate` and `coupling`."""
    return ConsistencyTrainer(
        optimizer,
        SqrtCurriculum(s0, s1, total_steps),
        teacher=AdaptiveEMATeacher(mu0, s0, mu_convention),
        grid=grid,
        distance=distance,
        weighting=UniformWeighting(),
        index_sampler=UniformIndex(),
        ema_rate=ema_rate,
        velocity_estimate=velocity_estimate,
        coupling=coupling,
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
    grid: AbstractGrid = KarrasGrid(),
    ema_rate: float | None = 0.999,
    distance: AbstractDistance | None = None,
    velocity_estimate: AbstractVelocityEstimate = OneSample(),
    coupling: AbstractCoupling = Independent(),
) -> ConsistencyTrainer:
    r"""Song and Dhariwal (2023)'s improved consistency training: stop-gradient teacher, the
    doubling curriculum, discretised log-normal interval sampling, $\lambda = 1/(\sigma_{i+1} - \sigma_i)$,
    and pseudo-Huber with $c = 0.00054\sqrt{d}$ (or `huber_c`; or any `distance`). The one-sample
    velocity and independent noise are the defaults of `velocity_estimate` and `coupling`."""
    if distance is not None and huber_c is not None:
        raise ValueError("Pass `huber_c` (for iCT's pseudo-Huber distance) or `distance`, not both.")
    return ConsistencyTrainer(
        optimizer,
        DoublingCurriculum(s0, s1, total_steps),
        teacher=StopGradientTeacher(),
        grid=grid,
        distance=PseudoHuber(huber_c) if distance is None else distance,
        weighting=InverseDeltaWeighting(),
        index_sampler=DiscreteLogNormal(p_mean, p_std),
        ema_rate=ema_rate,
        velocity_estimate=velocity_estimate,
        coupling=coupling,
    )


def cd(
    optimizer: optax.GradientTransformation,
    velocity: Velocity,
    *,
    num_scales: int = 18,
    mu: float = 0.95,
    method: str = "heun",
    distance: AbstractDistance = SquaredL2(),
    grid: AbstractGrid = KarrasGrid(),
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
        distance=distance,
        weighting=UniformWeighting(),
        index_sampler=UniformIndex(),
        pairing=ODEStep(velocity, method),
        ema_rate=ema_rate,
    )
