"""The training state and the helpers every trainer shares."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from .._misc import is_concrete


class TrainState(eqx.Module):
    """Everything a run needs to continue: the model, the optimiser state, the step, the PRNG key,
    and (where a method has them) the teacher, the sampling EMA and method-specific `extra` state.

    The key of step $k$ is `jax.random.fold_in(key, k)`, so a resumed run draws exactly the
    randomness of an uninterrupted one.
    """

    model: Any
    opt_state: Any
    step: Int[Array, ""]
    key: PRNGKeyArray
    teacher: Any = None
    ema: Any = None
    extra: Any = None


def partition_trainable(model) -> tuple[PyTree, PyTree]:
    """Split a model into (trainable arrays, everything else) by its `trainable()` spec."""
    return eqx.partition(model, model.trainable())


def check_ema_rate(ema_rate: Any) -> None:
    """A ValueError unless `ema_rate` (when concrete) is None or in [0, 1)."""
    if ema_rate is not None and is_concrete(ema_rate) and not 0.0 <= float(ema_rate) < 1.0:
        raise ValueError(f"`ema_rate` must be in [0, 1) or None, got {ema_rate}.")


def ema_update(average: PyTree, new: PyTree, decay: Array) -> PyTree:
    r"""$\bar\theta \leftarrow \mu \bar\theta + (1 - \mu) \theta$ on the floating-point leaves."""

    def update(a, b):
        if eqx.is_inexact_array(a):
            mu = jnp.asarray(decay).astype(a.dtype)
            return mu * a + (1 - mu) * b
        return a

    return jtu.tree_map(update, average, new)


def tree_select(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """`jnp.where(pred, on_true, on_false)` leaf by leaf on two pytrees of one structure (a traced
    choice between two states), at the leaves where `on_true` holds an array; elsewhere (static
    leaves, which the two share) `on_true`'s leaf."""
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


def plain_init(optimizer: optax.GradientTransformation, model, ema_rate: float | None, key: PRNGKeyArray) -> TrainState:
    """The initial state of a trainer of one model: optimiser state of its trainable arrays, step 0,
    and an EMA copy when `ema_rate` is set."""
    params, _ = partition_trainable(model)
    return TrainState(
        model=model,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=key,
        ema=model if ema_rate is not None else None,
    )


def plain_step(
    optimizer: optax.GradientTransformation, state: TrainState, loss_fn, ema_rate: float | None
) -> tuple[TrainState, dict[str, Array]]:
    """One optimiser step of `loss_fn(model) -> (loss, aux)` on the state's model, then the EMA update."""
    params, static = partition_trainable(state.model)
    params, opt_state, loss, aux, grad_norm = gradient_step(
        optimizer, params, state.opt_state, lambda p: loss_fn(eqx.combine(p, static))
    )
    ema = state.ema
    if ema is not None and ema_rate is not None:
        ema_params, ema_static = partition_trainable(ema)
        ema = eqx.combine(ema_update(ema_params, params, jnp.asarray(ema_rate, jnp.float32)), ema_static)
    metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
    model = eqx.combine(params, static)
    return TrainState(model, opt_state, state.step + 1, state.key, None, ema, state.extra), metrics
