"""Li, Huang and Wei's staged consistency training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optax
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray, PyTree

from .._consistency import AbstractConsistencyModel, StagedConsistencyModel
from .._consistency.function import apply_scalings
from .._custom_types import Batch
from .._losses import AbstractDistance, SquaredL2
from .._misc import check_instance, check_optimizer, choice_field, int_field
from ._base import AbstractTrainer, check_batch, gradient_step, partition_trainable, TrainState, tree_select
from ._consistency import ConsistencyTrainer
from ._coupling import AbstractCoupling, check_coupling, Independent
from ._curricula import ConstantCurriculum
from ._grids import FixedGrid
from ._index_sampling import UniformIndex
from ._pairing import AbstractPairing, CoupledNoise
from ._teachers import StopGradientTeacher
from ._velocity_estimate import AbstractVelocityEstimate, check_no_teacher_options, OneSample


def _stage_pair(trainer, model: StagedConsistencyModel, batch: Array, key: PRNGKeyArray, k: Array):
    r"""The pair $(a_k X_0 + s_k Z,\ x_{k-1})$ for 0-based stage index k >= 1, with $x_{k-1}$ from the
    trainer's `pairing` (`CoupledNoise`: $a_{k-1} \hat X_0 + s_{k-1} \hat Z$, with $(\hat X_0, \hat Z)$ =
    $(X_0, Z)$ for the paper's `OneSample`), after its `coupling` has paired $Z$ with $X_0$."""
    sched, dtype = model.schedule, batch.dtype
    t_k, t_prev = model.times[k], model.times[k - 1]
    z = trainer.coupling.pair(batch, jr.normal(key, batch.shape, dtype))
    x_k = sched.interpolate(t_k, batch, z)
    t_all = jnp.broadcast_to(jnp.asarray(t_k), batch.shape[:1])
    x0_hat, z_hat = trainer.velocity_estimate.estimate(sched, t_all, x_k, batch, z, key=jr.fold_in(key, 1))
    x_prev = jax.vmap(trainer.pairing.earlier, in_axes=(None, 0, 0, 0, None, None))(
        sched, x0_hat, z_hat, x_k, t_prev, t_k
    )
    return t_k, t_prev, x_k, x_prev


class StageProgress(eqx.Module):
    """The sequential staged trainer's own state (`TrainState.extra`)."""

    current: PyTree
    """The floating-point arrays of the stage being trained."""
    stage: Int[Array, ""]
    """Its 0-based index $k$ in the stack ($k = 1$ is the paper's $f_2$); `num_stages` once all are trained."""
    stage_step: Int[Array, ""]
    """Steps taken in the current stage."""


class StagedConsistencyTraining(AbstractTrainer):
    r"""Staged consistency training (Li, Huang and Wei): stage functions $f_1 = \mathrm{id}, f_2, \dots, f_T$,
    stage $k$ minimising $E\|f_k(a_k X_0 + s_k Z) - f_{k-1}(a_{k-1} X_0 + s_{k-1} Z)\|^2$ with the
    same $Z$ in both arguments.

    - `mode="sequential"` (the paper): stage $k$ trains for `steps_per_stage` steps against the
      frozen stage $k-1$, warm-started from it, with a fresh optimiser state; then stage $k+1$.
      The stage index is part of the traced state, so the whole run (any $T$) is one compiled
      program, and each step costs the same whatever $T$ is.
    - `mode="simultaneous"`: every stage trains at every step against the stop-gradient of its
      predecessor (each stage sees the batch with its own noise).

    The model is a `StagedConsistencyModel`. For a shared-weights variant (one network
    conditioned on $t$), use `ctjax.training.staged_shared`. There is no evaluation EMA:
    `result(state)` is the model. In sequential mode the state's `extra` is a `StageProgress`.

    **Metrics:** `loss`, `grad_norm` and, in sequential mode, `stage` (the paper's 1-based $k$ of
    the stage trained, $2..T$; it stays at $T$ once every stage is trained).

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `mode`: `"sequential"` (the paper) or `"simultaneous"`.
    - `steps_per_stage`: steps per stage (sequential), or steps of the whole run (simultaneous).
    - `distance`: $d$ of the stage loss (`SquaredL2()`, the paper's, by default).
    - `pairing`: how stage $k-1$'s input is built: `CoupledNoise()`, the paper's coupled noise
      (the default), or `ODEStep(velocity)`.
    - `velocity_estimate`: `OneSample()` (the paper's, the default) or `ReferenceBatch(...)`: stage
      $k-1$'s input $a_{k-1}\hat x_0 + s_{k-1}\hat z$ from the posterior mean over a reference set.
    - `coupling`: `Independent()` (the paper's, the default) or `MinibatchOT()`.
    """

    optimizer: optax.GradientTransformation = eqx.field(converter=check_optimizer)
    mode: str = eqx.field(
        static=True, default="sequential", converter=choice_field("mode", ("sequential", "simultaneous"))
    )
    steps_per_stage: int = eqx.field(static=True, default=1000, converter=int_field("steps_per_stage", 1))
    distance: AbstractDistance = SquaredL2()
    pairing: AbstractPairing = CoupledNoise()
    velocity_estimate: AbstractVelocityEstimate = OneSample()
    coupling: AbstractCoupling = eqx.field(default=Independent(), converter=check_coupling)

    def __check_init__(self):
        check_instance(self.distance, AbstractDistance, "distance", "a distance such as SquaredL2()")
        check_instance(self.pairing, AbstractPairing, "pairing", "CoupledNoise() or ODEStep(velocity)")
        check_no_teacher_options(self.velocity_estimate, self.pairing)

    def total_steps(self, model: StagedConsistencyModel) -> int:
        """Steps until the last stage is trained (sequential: (T - 1) x steps_per_stage)."""
        if self.mode == "sequential":
            return (model.num_stages - 1) * self.steps_per_stage
        return self.steps_per_stage

    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        if not isinstance(model, StagedConsistencyModel):
            raise TypeError(f"StagedConsistencyTraining needs a StagedConsistencyModel, got {type(model).__name__}.")
        step = jnp.zeros((), jnp.int32)
        if self.mode == "simultaneous":
            params, _ = partition_trainable(model)
            return TrainState(model=model, opt_state=self.optimizer.init(params), step=step, key=key)
        current = eqx.filter(model.stage_net(1), eqx.is_inexact_array)
        extra = StageProgress(current=current, stage=jnp.asarray(1, jnp.int32), stage_step=jnp.zeros((), jnp.int32))
        return TrainState(model=model, opt_state=self.optimizer.init(current), step=step, key=key, extra=extra)

    # -- sequential -------------------------------------------------------------------------

    def _sequential_loss(self, current, model: StagedConsistencyModel, batch, k, key):
        k_noise, k_drop = jr.split(key)
        t_k, t_prev, x_k, x_prev = _stage_pair(self, model, batch, k_noise, k)
        net_k = eqx.combine(current, eqx.filter(model.stage_net(k), eqx.is_inexact_array, inverse=True))
        prev = jax.lax.stop_gradient(eqx.filter(model.stage_net(k - 1), eqx.is_inexact_array))
        net_prev = eqx.combine(prev, eqx.filter(model.stage_net(k - 1), eqx.is_inexact_array, inverse=True))
        keys = jr.split(k_drop, batch.shape[0])
        apply = lambda net, t: jax.vmap(
            lambda x, kk: apply_scalings(model.scalings, model.schedule, net, t, x, kk, check_traced=False)
        )
        student = apply(net_k, t_k)(x_k, keys)
        teacher = jax.lax.stop_gradient(apply(net_prev, t_prev)(x_prev, keys))
        return jnp.mean(jax.vmap(self.distance)(student - teacher)), {}

    def _sequential_step(self, state: TrainState, batch: Array, key: PRNGKeyArray):
        model: StagedConsistencyModel = state.model
        progress: StageProgress = state.extra
        k = progress.stage
        current, opt_state, loss, _, grad_norm = gradient_step(
            self.optimizer, progress.current, state.opt_state, self._sequential_loss, model, batch, k, key
        )
        stage_step = progress.stage_step + 1
        finished = stage_step >= self.steps_per_stage
        # Write the trained stage into the stack; the next stage starts from it with a fresh optimiser.
        written = eqx.tree_at(
            lambda m: m.nets,
            model,
            replace=jtu.tree_map(
                lambda stack, leaf: stack.at[k].set(leaf) if eqx.is_inexact_array(stack) else stack,
                model.nets,
                eqx.combine(current, eqx.filter(model.stage_net(k), eqx.is_inexact_array, inverse=True)),
            ),
        )
        model = tree_select(finished, written, model)
        opt_state = tree_select(finished, self.optimizer.init(current), opt_state)
        extra = StageProgress(
            current=current, stage=k + finished.astype(jnp.int32), stage_step=jnp.where(finished, 0, stage_step)
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "stage": k + 1}
        return state.advanced(model=model, opt_state=opt_state, extra=extra), metrics

    # -- simultaneous -----------------------------------------------------------------------

    def _simultaneous_loss(self, params, static, batch, key):
        model: StagedConsistencyModel = eqx.combine(params, static)
        num_stages = model.num_stages
        keys = jr.split(key, num_stages - 1)

        def one_stage(k, k_key):
            k_noise, k_drop = jr.split(k_key)
            t_k, t_prev, x_k, x_prev = _stage_pair(self, model, batch, k_noise, k)
            drop = jr.split(k_drop, batch.shape[0])
            student = jax.vmap(lambda x, kk: model.stage(k, x, key=kk))(x_k, drop)
            frozen = eqx.combine(
                jax.lax.stop_gradient(eqx.filter(model, eqx.is_array)), eqx.filter(model, eqx.is_array, inverse=True)
            )
            teacher = jax.vmap(lambda x, kk: frozen.stage(k - 1, x, key=kk))(x_prev, drop)
            return jnp.mean(jax.vmap(self.distance)(student - jax.lax.stop_gradient(teacher)))

        per_stage = jax.vmap(one_stage)(jnp.arange(1, num_stages), keys)
        return jnp.mean(per_stage), {"per_stage": per_stage}

    def _simultaneous_step(self, state: TrainState, batch: Array, key: PRNGKeyArray):
        params, static = partition_trainable(state.model)
        params, opt_state, loss, _, grad_norm = gradient_step(
            self.optimizer, params, state.opt_state, self._simultaneous_loss, static, batch, key
        )
        model = eqx.combine(params, static)
        return state.advanced(model=model, opt_state=opt_state), {"loss": loss, "grad_norm": grad_norm}

    def step(self, state: TrainState, batch: Batch, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        batch = check_batch(batch, state.model)
        if self.mode == "simultaneous":
            return self._simultaneous_step(state, batch, key)
        # After the last stage further steps change nothing.
        done = state.extra.stage >= state.model.num_stages
        stepped, metrics = self._sequential_step(state, batch, key)
        new_state = tree_select(done, state, stepped)
        new_state = eqx.tree_at(lambda s: s.step, new_state, state.step + 1)
        return new_state, metrics

    def result(self, state: TrainState) -> StagedConsistencyModel:
        return state.model


def staged_shared(
    optimizer: optax.GradientTransformation,
    times: ArrayLike,
    ema_rate: float | None = None,
    *,
    velocity_estimate: AbstractVelocityEstimate = OneSample(),
    coupling: AbstractCoupling = Independent(),
) -> ConsistencyTrainer:
    r"""The shared-weights variant of staged training: one network conditioned on $t$, every
    stage $k \in \{2..T\}$ at once, $E\|f(t_k, X_k) - \mathrm{sg}\, f(t_{k-1}, X_{k-1})\|^2$ with
    coupled noise and $k$ uniform. It is consistency training on the fixed stage grid `times`
    (e.g. `DiscreteVP.stage_times()`), with a stop-gradient teacher, $\ell_2^2$ and $\lambda \equiv 1$."""
    grid = FixedGrid(times)
    return ConsistencyTrainer(
        optimizer,
        ConstantCurriculum(grid.times.shape[0]),
        teacher=StopGradientTeacher(),
        grid=grid,
        distance=SquaredL2(),
        index_sampler=UniformIndex(),
        ema_rate=ema_rate,
        velocity_estimate=velocity_estimate,
        coupling=coupling,
    )
