r"""The trainer interface, its state, and the machinery every trainer shares.

A trainer is an immutable module of hyperparameters with pure `init`, `step` and `result`
(Optax's `init`/`update` pattern). `AbstractEMATrainer` is the shared core of every trainer that
optimises one model with one optimiser: it owns the gradient step, the evaluation EMA, an EMA
teacher where a method keeps one, and `result`; a concrete trainer supplies its `loss`.
"""

import abc
import dataclasses
from typing import Any, ClassVar, TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from .._consistency import AbstractConsistencyModel
from .._custom_types import Batch


class TrainState(eqx.Module):
    """Everything a run needs to continue.

    **Fields:**

    - `model`: the model being trained.
    - `opt_state`: the optimiser state.
    - `step`: the number of steps taken (int32).
    - `key`: the run's PRNG key; step $k$ uses `jax.random.fold_in(key, k)`, so a resumed run
      draws exactly the randomness of an uninterrupted one.
    - `teacher`: the EMA teacher $\theta^-$ of methods that keep one (CT, CD), else None.
    - `ema`: the evaluation EMA of the model, else None.
    - `extra`: the method's own state, a typed module (sCM's `AdaptiveWeighting`, the staged
      trainer's `StageProgress`), else None.

    Build it by keyword; `advanced(**changes)` gives the next step's state.
    """

    model: Any
    opt_state: Any
    step: Int[Array, ""]
    key: PRNGKeyArray
    teacher: Any = None
    ema: Any = None
    extra: Any = None

    def advanced(self, **changes: Any) -> "TrainState":
        """The state after one more step: `step + 1`, and the fields named in `changes` replaced."""
        return dataclasses.replace(self, step=self.step + 1, **changes)


class AbstractTrainer(eqx.Module):
    """An immutable bundle of hyperparameters with pure functions

    - `init(model, *, key) -> TrainState`,
    - `step(state, batch, *, key) -> (state, metrics)` where `batch` is data of shape `(B, dim)`,
    - `result(state) -> model` the model to sample from (e.g. the EMA).

    `step` is pure and jit-compatible; `ctjax.training.fit` runs many of them in `lax.scan`.
    Each trainer's docstring lists the scalar metrics its `step` returns.
    """

    @abc.abstractmethod
    def init(self, model: AbstractConsistencyModel, *, key: PRNGKeyArray) -> TrainState:
        """The initial state for `model`; `key` seeds all of the run's randomness."""

    @abc.abstractmethod
    def step(self, state: TrainState, batch: Batch, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        """One optimisation step on a batch of data `(B, dim)`; returns the new state and scalar metrics."""

    @abc.abstractmethod
    def result(self, state: TrainState) -> AbstractConsistencyModel:
        """The trained model to evaluate and sample from."""


class AbstractEMATrainer(AbstractTrainer):
    r"""The shared core of the trainers of one model by one optimiser.

    A subclass provides the fields `optimizer` and `ema_rate`, an `init` that builds its state
    with `initial_state`, its `loss`, and `teacher_decay`. The rest is this class's:

    - `step`: one gradient step of `loss` on the model's trainable arrays (its `trainable()`
      spec) and, where the state has `extra`, on the floating-point arrays of `extra` too (one
      optimiser over both); then, where the state keeps a teacher, the EMA teacher
      $\theta^- \leftarrow \mu\theta^- + (1 - \mu)\theta$ at rate $\mu$ = `teacher_decay(step)`;
      then the evaluation EMA $\bar\theta \leftarrow r\bar\theta + (1 - r)\theta$ at $r$ = `ema_rate`.
    - `result`: the evaluation EMA, or the model itself when `ema_rate` is None.

    **Metrics** of every such trainer: `loss`, `grad_norm` (the global norm of the gradient),
    `teacher_decay` (only with a stored teacher), and the ones its `loss` adds.
    """

    if TYPE_CHECKING:
        # An AbstractVar creates no dataclass field at run time, but type checkers count it as one
        # and would shift the positional arguments of every subclass; to them these are ClassVars.
        optimizer: ClassVar[optax.GradientTransformation]
        ema_rate: ClassVar[float | None]
    else:
        optimizer: eqx.AbstractVar[optax.GradientTransformation]
        ema_rate: eqx.AbstractVar[float | None]

    @abc.abstractmethod
    def loss(
        self,
        model: Any,
        extra: Any,
        teacher: Any,
        batch: Batch,
        step: Int[Array, ""],
        key: PRNGKeyArray,
    ) -> tuple[Array, dict[str, Array]]:
        """The mean loss over `batch` `(B, dim)` and the scalar metrics it adds.

        `model` and `extra` are differentiated; `teacher` is the stored EMA teacher (None: the
        method's teacher, if any, is the stop-gradient of `model`); `step` is the training step.
        """

    @abc.abstractmethod
    def teacher_decay(self, step: Int[Array, ""]) -> Array | None:
        r"""The EMA rate $\mu$ of the stored teacher at training step `step`, or None where the
        state keeps no teacher (a stop-gradient teacher, or none at all)."""

    def initial_state(
        self, model: AbstractConsistencyModel, *, key: PRNGKeyArray, teacher: Any = None, extra: Any = None
    ) -> TrainState:
        """Step 0: the optimiser state of the model's trainable arrays (and of `extra`'s arrays,
        where given), and the evaluation EMA's copy of the model where `ema_rate` is set."""
        params, _ = partition_trainable(model)
        trainable = params if extra is None else (params, eqx.filter(extra, eqx.is_inexact_array))
        return TrainState(
            model=model,
            opt_state=self.optimizer.init(trainable),
            step=jnp.zeros((), jnp.int32),
            key=key,
            teacher=teacher,
            ema=model if self.ema_rate is not None else None,
            extra=extra,
        )

    def step(self, state: TrainState, batch: Batch, *, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        batch = check_batch(batch, state.model)
        params, static = partition_trainable(state.model)
        has_extra = state.extra is not None
        extra_params, extra_static = eqx.partition(state.extra, eqx.is_inexact_array)

        def loss_fn(trainable):
            p, e = trainable if has_extra else (trainable, None)
            extra = eqx.combine(e, extra_static) if has_extra else None
            return self.loss(eqx.combine(p, static), extra, state.teacher, batch, state.step, key)

        trainable = (params, extra_params) if has_extra else params
        trainable, opt_state, loss, aux, grad_norm = gradient_step(self.optimizer, trainable, state.opt_state, loss_fn)
        params, extra_params = trainable if has_extra else (trainable, None)
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
        teacher = state.teacher
        decay = self.teacher_decay(state.step)
        if teacher is not None and decay is not None:
            teacher = ema_model(teacher, params, decay)
            metrics["teacher_decay"] = decay
        ema = state.ema
        if ema is not None and self.ema_rate is not None:
            ema = ema_model(ema, params, jnp.asarray(self.ema_rate, jnp.float32))
        new_state = state.advanced(
            model=eqx.combine(params, static),
            opt_state=opt_state,
            teacher=teacher,
            ema=ema,
            extra=eqx.combine(extra_params, extra_static) if has_extra else None,
        )
        return new_state, metrics

    def result(self, state: TrainState) -> AbstractConsistencyModel:
        return state.model if state.ema is None else state.ema


def check_batch(batch: Array, model: Any) -> Array:
    """`batch` as a training batch for `model`: a non-empty `(B, dim)` array of real numbers
    (checked while tracing, so an empty batch never reaches the optimiser)."""
    if not hasattr(batch, "shape") or not hasattr(batch, "dtype"):
        raise TypeError(f"`batch` must be a (B, dim) array, got {type(batch).__name__}.")
    if not jnp.issubdtype(batch.dtype, jnp.floating):
        raise TypeError(f"`batch` must hold floating-point numbers, got dtype {batch.dtype}.")
    dim = getattr(model, "dim", None)
    if batch.ndim != 2 or batch.shape[0] < 1 or (isinstance(dim, int) and batch.shape[1] != dim):
        want = f"(B, {dim})" if isinstance(dim, int) else "(B, dim)"
        raise ValueError(f"`batch` must be a non-empty {want} array with B >= 1, got shape {tuple(batch.shape)}.")
    return batch


def partition_trainable(model) -> tuple[PyTree, PyTree]:
    """Split a model into (trainable arrays, everything else) by its `trainable()` spec."""
    return eqx.partition(model, model.trainable())


def ema_update(average: PyTree, new: PyTree, decay: Array) -> PyTree:
    r"""$\bar\theta \leftarrow \mu \bar\theta + (1 - \mu) \theta$ on the floating-point leaves."""

    def update(a, b):
        if eqx.is_inexact_array(a):
            mu = jnp.asarray(decay).astype(a.dtype)
            return mu * a + (1 - mu) * b
        return a

    return jtu.tree_map(update, average, new)


def ema_model(average: Any, params: PyTree, decay: Array) -> Any:
    """The model `average` with its trainable arrays moved towards `params` (`ema_update`)."""
    avg_params, avg_static = partition_trainable(average)
    return eqx.combine(ema_update(avg_params, params, decay), avg_static)


def stop_gradient_model(model: Any) -> Any:
    """The model with gradients stopped on every array (a frozen teacher)."""
    arrays, rest = eqx.partition(model, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(arrays), rest)


def tree_select(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """`jnp.where(pred, on_true, on_false)` leaf by leaf on two pytrees of one structure (a traced
    choice between two states).

    At the leaves where `on_true` holds an array the choice is traced; elsewhere (static leaves,
    which the two share) `on_true`'s leaf is kept.
    """
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b) if eqx.is_array(a) else a, on_true, on_false)


def gradient_step(
    optimizer: optax.GradientTransformation, params: PyTree, opt_state: PyTree, loss_fn, *args
) -> tuple[PyTree, PyTree, Array, Any, Array]:
    """One optimiser step on `params` (a pytree with None for frozen leaves).

    Returns (params, opt_state, loss, aux, gradient norm).
    """
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    # Optax mixes int32 counters with floats; allow that even under strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    return params, opt_state, loss, aux, optax.tree.norm(grads)


def step_key(state: TrainState) -> PRNGKeyArray:
    """The key of the state's current step (a pure function of the run key and the step)."""
    return jax.random.fold_in(state.key, state.step)
