"""Run many training steps inside `lax.scan`, with a host-side progress bar."""

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array

from .._targets import AbstractTarget
from .base import AbstractTrainer
from .state import step_key, TrainState


def draw_batch(data, key, batch_size: int) -> Array:
    """`batch_size` examples from a target (sampled) or an `(N, dim)` data array (with replacement)."""
    if isinstance(data, AbstractTarget):
        return data.sample(key, batch_size)
    return data[jr.randint(key, (batch_size,), 0, data.shape[0])]


def _check_data(data, batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    if isinstance(data, AbstractTarget):
        return
    if not (hasattr(data, "ndim") and data.ndim == 2 and data.shape[0] > 0):
        raise ValueError(
            f"`data` must be a ctjax target or a non-empty (N, dim) array, got {type(data).__name__} "
            f"with shape {getattr(data, 'shape', None)}."
        )


@eqx.filter_jit
def run_chunk(trainer: AbstractTrainer, state: TrainState, data, num_active: Array, batch_size: int, chunk_size: int):
    """`chunk_size` steps in one `lax.scan`; steps at positions >= `num_active` are skipped, so
    every chunk (including a short last one) reuses one compiled program."""

    def one_step(state):
        k_data, k_step = jr.split(step_key(state))
        batch = draw_batch(data, k_data, batch_size)
        return trainer.step(state, batch, key=k_step)

    metrics_shape = eqx.filter_eval_shape(one_step, state)[1]

    def body(state, index):
        def skip(state):
            return state, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

        return jax.lax.cond(index < num_active, one_step, skip, state)

    return jax.lax.scan(body, state, jnp.arange(chunk_size))


def fit(
    trainer: AbstractTrainer,
    state: TrainState,
    data,
    *,
    num_steps: int,
    batch_size: int,
    chunk_size: int = 200,
    progress: bool = True,
    callback: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Train for `num_steps` steps in chunks of `chunk_size` compiled steps.

    **Arguments:**

    - `trainer`, `state`: from `trainer.init(model, key=...)`.
    - `data`: a ctjax target (sampled on the fly) or an `(N, dim)` array of training data.
    - `num_steps`, `batch_size`: the number of steps and examples per step.
    - `chunk_size`: steps per compiled `lax.scan`; the host sees progress (and the callback runs)
      between chunks.
    - `progress`: show a progress bar with the loss and steps per second.
    - `callback`: called as `callback(state, chunk_metrics)` after every chunk (for checkpoints).

    **Returns:** the final state and the per-step metrics history (NumPy arrays of length `num_steps`).
    """
    _check_data(data, batch_size)
    if int(num_steps) < 0:
        raise ValueError(f"`num_steps` must be non-negative, got {num_steps}.")
    if int(chunk_size) < 1:
        raise ValueError(f"`chunk_size` must be at least 1, got {chunk_size}.")
    chunk_size = min(int(chunk_size), max(int(num_steps), 1))
    history: dict[str, list[np.ndarray]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(num_steps), unit="step", dynamic_ncols=True)
    done = 0
    try:
        while done < num_steps:
            active = min(chunk_size, num_steps - done)
            start = time.perf_counter()
            state, metrics = run_chunk(trainer, state, data, jnp.asarray(active), int(batch_size), chunk_size)
            metrics = {k: np.asarray(v)[:active] for k, v in metrics.items()}
            seconds = time.perf_counter() - start
            for name, values in metrics.items():
                history.setdefault(name, []).append(values)
            done += active
            if bar is not None:
                bar.update(active)
                bar.set_postfix(loss=f"{float(np.mean(metrics['loss'])):.4g}", steps_per_s=f"{active / seconds:.0f}")
            if callback is not None:
                callback(state, metrics)
    finally:
        if bar is not None:
            bar.close()
    return state, {k: np.concatenate(v) for k, v in history.items()}
