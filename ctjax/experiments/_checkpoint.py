"""Atomic checkpoints of a training state (Equinox serialisation; PRNG keys included).

A checkpoint is one file, `checkpoint.npz`: a zip archive (uncompressed; every member carries a
CRC-32) that holds the serialised state (`state.eqx`), its metadata (`meta.json`) and the per-step
history (`history/<metric>.npy`), so `numpy.load` reads it too. It is written whole to a temporary
file in the run directory, fsynced, and renamed over the previous checkpoint: a process killed at any
moment leaves the old checkpoint or the new one, never a mixture.

Runs saved by older versions hold three files written one after another (`checkpoint.eqx`,
`checkpoint.json`, `history.npz`); they still load, and the next checkpoint of a resumed run
replaces them by `checkpoint.npz`.
"""

import contextlib
import io
import json
import os
import pathlib
import secrets
import zipfile
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


CHECKPOINT = "checkpoint.npz"
# The layout of older versions: state, metadata and history in three separately written files.
LEGACY_STATE = "checkpoint.eqx"
LEGACY_META = "checkpoint.json"
LEGACY_HISTORY = "history.npz"

_STATE, _META, _HISTORY = "state.eqx", "meta.json", "history/"
_COMMENT = b"ctjax checkpoint, format 2"


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


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make a rename or removal in `directory` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temporary(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new, empty file `<name>.<random>.tmp` beside `path`, opened for writing. Its mode is
    0o666 less the umask, as for any file a program creates (`tempfile.mkstemp` would make it
    0o600, and the rename would keep that)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f"{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def temporaries(run_dir: pathlib.Path, names) -> list[pathlib.Path]:
    """The temporary files `_atomic_write` leaves beside `run_dir/<name>` when it is killed."""
    return sorted(p for name in names for p in pathlib.Path(run_dir).glob(f"{name}.*.tmp"))


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write `data` to a temporary file in the same directory, fsync it, rename it over `path` and
    fsync the directory: a reader (or a process resuming after a kill) sees the old file or the
    new one, never a partial one. Only unbuffered `os` calls touch the disk."""
    path = pathlib.Path(path)
    fd, tmp = _create_temporary(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # the same state gives the same bytes
    info.compress_type = zipfile.ZIP_STORED
    return info


def _pack(state: Any, meta: dict, history: dict[str, np.ndarray]) -> bytes:
    state_bytes = io.BytesIO()
    eqx.tree_serialise_leaves(state_bytes, state, filter_spec=_write_leaf)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.comment = _COMMENT
        z.writestr(_member(_META), json.dumps(meta, indent=2).encode())
        z.writestr(_member(_STATE), state_bytes.getvalue())
        for name, values in history.items():
            array = io.BytesIO()
            np.lib.format.write_array(array, np.asarray(values), allow_pickle=False)
            z.writestr(_member(f"{_HISTORY}{name}.npy"), array.getvalue())
    return archive.getvalue()


def checkpoint_path(run_dir: pathlib.Path | str) -> pathlib.Path | None:
    """The file that holds the checkpoint of `run_dir` (`checkpoint.npz`, or the state file of a run
    saved by an older version), or None if it has none."""
    run_dir = pathlib.Path(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return run_dir / CHECKPOINT
    if (run_dir / LEGACY_STATE).exists() and (run_dir / LEGACY_META).exists():
        return run_dir / LEGACY_STATE
    return None


def save_checkpoint(
    run_dir: pathlib.Path | str, state: Any, meta: dict, history: dict[str, np.ndarray] | None = None
) -> pathlib.Path:
    """Save `state` (any pytree, e.g. a `TrainState`), `meta` (JSON) and `history` (per-step metric
    arrays, e.g. `fit`'s) as one atomic unit, `run_dir/checkpoint.npz`; return its path.

    The files of the older three-file layout, if the run has them, are removed only once the new
    checkpoint is in place."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT
    _atomic_write(path, _pack(state, meta, dict(history or {})))
    remove_superseded(run_dir)
    return path


def remove_superseded(run_dir: pathlib.Path | str) -> None:
    """Remove the files of the older three-file layout once `checkpoint.npz` is in place (the
    archive is what loads; a process killed half-way through the removal leaves nothing wrong)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        return
    removed = False
    for name in (LEGACY_META, LEGACY_STATE, LEGACY_HISTORY):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run_dir / name)
            removed = True
    if removed:
        _fsync_dir(run_dir)


def _deserialise(path: pathlib.Path, f, like) -> Any:
    try:
        state = eqx.tree_deserialise_leaves(f, like, filter_spec=_read_leaf)
        if f.read(1):
            raise CheckpointError(f"{path} is longer than the state it should hold: it belongs to another model.")
    except CheckpointError:
        raise
    except Exception as err:  # equinox/numpy raise various errors for truncated or mismatched files
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or does not match this run's model/optimizer ({type(err).__name__}: {err})."
        ) from err
    return state


def _parse_meta(where: pathlib.Path | str, text: bytes | str) -> dict:
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"Corrupt checkpoint metadata {where}: {err}.") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"Corrupt checkpoint metadata {where}: expected a JSON object, got {meta!r:.40}.")
    return meta


def _load_archive(path: pathlib.Path, like: Any) -> tuple[Any, dict, dict[str, np.ndarray]]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            missing = [name for name in (_STATE, _META) if name not in names]
            if missing:
                raise CheckpointError(f"Checkpoint {path} is corrupt: it holds no {' or '.join(missing)}.")
            raw_meta, raw_state = z.read(_META), z.read(_STATE)  # reading checks each member's CRC-32
            raw_history = {
                name[len(_HISTORY) : -len(".npy")]: z.read(name)
                for name in names
                if name.startswith(_HISTORY) and name.endswith(".npy")
            }
        history = {name: np.load(io.BytesIO(raw), allow_pickle=False) for name, raw in raw_history.items()}
    except CheckpointError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, numpy's ValueError, ...
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}).") from err
    meta = _parse_meta(f"{path} ({_META})", raw_meta)
    state = _deserialise(path, io.BytesIO(raw_state), like)
    return state, meta, history


def _load_legacy(run_dir: pathlib.Path, like: Any) -> tuple[Any, dict, dict[str, np.ndarray]]:
    path, meta_path, history_path = run_dir / LEGACY_STATE, run_dir / LEGACY_META, run_dir / LEGACY_HISTORY
    meta = _parse_meta(meta_path, meta_path.read_bytes())
    with open(path, "rb") as f:
        state = _deserialise(path, f, like)
    history: dict[str, np.ndarray] = {}
    if history_path.exists():
        try:
            with np.load(history_path, allow_pickle=False) as f:
                history = {k: f[k] for k in f.files}
        except Exception as err:
            raise CheckpointError(f"Corrupt training history {history_path} ({type(err).__name__}: {err}).") from err
    # The three files were written one after another (history, state, metadata): a process killed
    # between the state and the metadata left metadata older than the state, and a history that
    # covers the state's steps. The state's own step is the truth.
    step = getattr(state, "step", None)
    if step is not None:
        meta = {**meta, "step": int(step)}
    if "step" in meta:
        history = {k: v[: int(meta["step"])] for k, v in history.items()}
    return state, meta, history


def load_checkpoint(run_dir: pathlib.Path | str, like: Any) -> tuple[Any, dict, dict[str, np.ndarray]]:
    """Load `(state, meta, history)` from `run_dir`'s checkpoint, the state with the structure of
    `like` (a run saved in the older three-file layout loads too; its history is cut to the state's
    step). Raises `CheckpointError` with the reason."""
    run_dir = pathlib.Path(run_dir)
    path = checkpoint_path(run_dir)
    if path is None:
        raise CheckpointError(
            f"No checkpoint in {run_dir} (expected {CHECKPOINT}, or {LEGACY_STATE} and {LEGACY_META} "
            "of a run saved by an older ctjax)."
        )
    if path.name == CHECKPOINT:
        return _load_archive(path, like)
    return _load_legacy(run_dir, like)
