"""Run many training steps inside `lax.scan`, with a host-side progress bar."""

import time
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray

from .._custom_types import Data
from .._targets import AbstractTarget
from ._base import AbstractTrainer, step_key, TrainState


def draw_batch(data: Data, key: PRNGKeyArray, batch_size: int) -> Array:
    """`batch_size` examples from a target (sampled) or an `(N, dim)` data array (with replacement)."""
    if isinstance(data, AbstractTarget):
        return data.sample(key, batch_size)
    return data[jr.randint(key, (batch_size,), 0, data.shape[0])]


DATA_AXIS = "data"
"""The name of the mesh axis that `fit` shards the batch over (`jax.make_mesh((n,), (DATA_AXIS,))`)."""


def _check_mesh(mesh, batch_size: int) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"`mesh` must have an axis named {DATA_AXIS!r} to shard the batch over, got axes {mesh.axis_names}; "
            f"build it with jax.make_mesh((num_devices,), ({DATA_AXIS!r},))."
        )
    num = mesh.shape[DATA_AXIS]
    if int(batch_size) % num:
        raise ValueError(
            f"`batch_size` ({batch_size}) must be divisible by the {num} devices of the mesh's {DATA_AXIS!r} axis; "
            f"use a batch size of {num * max(1, round(int(batch_size) / num))}, say."
        )


def _check_dims(state: TrainState, data) -> None:
    """The data and the model must have the same dimension (a static check, before compiling)."""
    model_dim = getattr(state.model, "dim", None)
    data_dim = data.dim if isinstance(data, AbstractTarget) else data.shape[1]
    if isinstance(model_dim, int) and model_dim != data_dim:
        raise ValueError(
            f"`data` has dimension {data_dim} but the model in `state` has dimension {model_dim}; "
            "build the model's network for the data's dimension (e.g. MLP(data.dim, ...))."
        )


def _check_data(data: Data, batch_size: int) -> Data:
    """`data`, checked (integer arrays become the default floating dtype)."""
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    if isinstance(data, AbstractTarget):
        return data
    if not (hasattr(data, "ndim") and data.ndim == 2 and data.shape[0] > 0):
        raise ValueError(
            f"`data` must be a ctjax target or a non-empty (N, dim) array, got {type(data).__name__} "
            f"with shape {getattr(data, 'shape', None)}."
        )
    dtype = np.dtype(data.dtype)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"`data` must hold real numbers, got dtype {dtype}.")
    # One reduction where the data live (no copy to the host).
    if getattr(data, "is_fully_addressable", True) and not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError("`data` contains NaN or infinite values; remove or impute them before training.")
    if int(batch_size) > data.shape[0]:
        warnings.warn(
            f"`batch_size` ({batch_size}) is larger than the data set ({data.shape[0]} points): each batch "
            "repeats points (batches are drawn with replacement).",
            stacklevel=3,
        )
    if np.issubdtype(dtype, np.integer):
        data = jnp.asarray(data, jnp.result_type(float))
    return data


@eqx.filter_jit
def run_chunk(
    trainer: AbstractTrainer,
    state: TrainState,
    data: Data,
    num_active: Array,
    batch_size: int,
    chunk_size: int,
    mesh: Mesh | None = None,
):
    """`chunk_size` steps in one `lax.scan`; steps at positions >= `num_active` are skipped, so
    every chunk (including a short last one) reuses one compiled program. With a `mesh`, each
    drawn batch is sharded over its "data" axis and the state stays replicated (data parallelism:
    the compiler inserts the all-reduce of the gradients)."""

    def one_step(state):
        k_data, k_step = jr.split(step_key(state))
        batch = draw_batch(data, k_data, batch_size)
        if mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))
        return trainer.step(state, batch, key=k_step)

    metrics_shape = eqx.filter_eval_shape(one_step, state)[1]

    def body(state, index):
        def skip(state):
            return state, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

        return jax.lax.cond(index < num_active, one_step, skip, state)

    state, metrics = jax.lax.scan(body, state, jnp.arange(chunk_size))
    if mesh is not None:
        state = eqx.filter_shard(state, NamedSharding(mesh, PartitionSpec()))
    return state, metrics


def fit(
    trainer: AbstractTrainer,
    state: TrainState,
    data: Data,
    *,
    num_steps: int,
    batch_size: int,
    chunk_size: int = 200,
    progress: bool = True,
    callback: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
    mesh: Mesh | None = None,
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
    - `mesh`: train data-parallel on a `jax.sharding.Mesh` with a `"data"` axis (e.g.
      `jax.make_mesh((4,), ("data",))`): every batch is sharded over that axis and the state and
      `data` are replicated; the steps and their randomness are those of a single-device run.
      `batch_size` must be divisible by the size of the axis. None: the default device.

    **Returns:** the final state and the per-step metrics history: NumPy arrays of length `num_steps`
    under the names of the trainer's metrics (each trainer's docstring lists them).
    """
    data = _check_data(data, batch_size)
    _check_dims(state, data)
    if mesh is not None:
        _check_mesh(mesh, batch_size)
        replicated = NamedSharding(mesh, PartitionSpec())
        state, data = eqx.filter_shard((state, data), replicated)
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
            state, metrics = run_chunk(trainer, state, data, jnp.asarray(active), int(batch_size), chunk_size, mesh)
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
