"""Atomic checkpoints of a training state (Equinox serialisation; PRNG keys included)."""

import json
import os
import pathlib
import tempfile
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


CHECKPOINT = "checkpoint.eqx"
META = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match the run's configuration."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _write_leaf(f, x) -> None:
    if _is_key(x):
        np.save(f, np.asarray(jax.random.key_data(x)), allow_pickle=False)
    else:
        eqx.default_serialise_filter_spec(f, x)


def _read_leaf(f, like):
    if _is_key(like):
        data = np.load(f, allow_pickle=False)
        return jax.random.wrap_key_data(jnp.asarray(data), impl=jax.random.key_impl(like))
    return eqx.default_deserialise_filter_spec(f, like)


def _atomic_write(path: pathlib.Path, write) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`:
    a reader sees the old file or the new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(run_dir: pathlib.Path | str, state: Any, meta: dict) -> None:
    """Save `state` (any pytree, e.g. a `TrainState`) and `meta` (JSON) atomically; the metadata
    is written last, so it always describes a complete checkpoint."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / CHECKPOINT, lambda f: eqx.tree_serialise_leaves(f, state, filter_spec=_write_leaf))
    _atomic_write(run_dir / META, lambda f: f.write(json.dumps(meta, indent=2).encode()))


def load_checkpoint(run_dir: pathlib.Path | str, like: Any) -> tuple[Any, dict]:
    """Load a state with the structure of `like`; raises `CheckpointError` with the reason."""
    run_dir = pathlib.Path(run_dir)
    path, meta_path = run_dir / CHECKPOINT, run_dir / META
    if not path.exists() or not meta_path.exists():
        raise CheckpointError(f"No checkpoint in {run_dir} (expected {CHECKPOINT} and {META}).")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"Corrupt checkpoint metadata {meta_path}: {err}.") from err
    try:
        with open(path, "rb") as f:
            state = eqx.tree_deserialise_leaves(f, like, filter_spec=_read_leaf)
            if f.read(1):
                raise CheckpointError(f"{path} is longer than the state it should hold: it belongs to another model.")
    except CheckpointError:
        raise
    except Exception as err:  # equinox/numpy raise various errors for truncated or mismatched files
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or does not match this run's model/optimizer ({type(err).__name__}: {err})."
        ) from err
    return state, meta
