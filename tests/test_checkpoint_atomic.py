"""A checkpoint is one atomic unit: a process killed at any moment of a run (simulated here at every
write boundary, deterministically) leaves a directory that `--resume` continues, without losing a
completed checkpoint, to exactly the state and history of an uninterrupted run. Runs saved in the
older three-file layout still load and resume; run files are as readable as the umask allows.

Every run here has one configuration (`ARGV`), and `build_method` is memoised per configuration, so
all runs reuse one trainer object and hence one compiled chunk.
(A real SIGKILL of a child process: tests/test_checkpoint_kill.py.)"""

import json
import os
import pathlib
import re

import equinox as eqx
import jax
import numpy as np
import pytest

from ctjax.experiments import _checkpoint as checkpoint, _cli as cli, _run as run
from ctjax.experiments._config import to_json, TrainConfig


TINY = ["--model.width", "16", "--model.depth", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]
CHUNKS = ["--steps", "20", "--chunk-size", "5", "--checkpoint-every", "5"]
ARGV = ["train", *CHUNKS, *TINY]


@pytest.fixture(scope="module", autouse=True)
def one_trainer():
    """`build_method` memoised per configuration (the trainer and model are functions of it)."""
    built, build_method = {}, run.build_method

    def memoised(cfg, problem):
        fields = to_json(cfg)
        key = json.dumps({k: v for k, v in fields.items() if k not in ("out", "resume", "progress")}, sort_keys=True)
        if key not in built:
            built[key] = build_method(cfg, problem)
        return built[key]

    patch = pytest.MonkeyPatch()
    patch.setattr(run, "build_method", memoised)
    yield
    patch.undo()


# What a kill -9 leaves: the run directory as it is on disk between two system calls.


def _disk(root: pathlib.Path):
    """Every file (bytes) and folder (None) under `root`; None if `root` does not exist."""
    if not root.exists():
        return None
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return tuple(sorted(found.items()))


def _restore(disk, where: pathlib.Path) -> None:
    if disk is None:
        return
    where.mkdir()
    for name, data in disk:
        if data is None:
            (where / name).mkdir(parents=True, exist_ok=True)
        else:
            (where / name).write_bytes(data)


class Snapshots:
    """Wraps the `os` calls that create, write, sync, rename or remove files, and records the run
    directory before and after each one that touches it; a write is also recorded half-done. A
    change between two recorded calls (a write by other means) is noted in `untracked`."""

    CALLS = ("open", "write", "fsync", "ftruncate", "close", "replace", "rename", "unlink", "remove", "rmdir", "mkdir")

    def __init__(self, root: pathlib.Path):
        self.root = root.absolute()
        self.fds: set[int] = set()
        self.taken: list[tuple[str, object, int, int]] = []  # (label, disk, checkpoints done, in progress)
        self.untracked: list[str] = []
        self.done = self.in_progress = 0

    def _inside(self, path) -> bool:
        if isinstance(path, int):
            return False
        path = pathlib.Path(os.fsdecode(path)).absolute()
        return path == self.root or self.root in path.parents

    def take(self, label: str) -> None:
        disk = _disk(self.root)
        # Nothing may change between one wrapped call and the next.
        if self.taken and disk != self.taken[-1][1] and not label.startswith(("after", "half-way")):
            self.untracked.append(label)
        self.taken.append((label, disk, self.done, self.in_progress))

    def wrap(self, monkeypatch) -> None:
        real = {name: getattr(os, name) for name in self.CALLS}

        def by_path(name):
            def call(*args, **kwargs):
                if not any(self._inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
                    return real[name](*args, **kwargs)
                self.take(f"before {name} {args[0]}")
                result = real[name](*args, **kwargs)
                if name == "open" and args[1] & (os.O_WRONLY | os.O_RDWR):
                    self.fds.add(result)
                self.take(f"after {name} {args[0]}")
                return result

            return call

        def by_fd(name):
            def call(fd, *args, **kwargs):
                if fd not in self.fds:
                    return real[name](fd, *args, **kwargs)
                self.take(f"before {name} fd {fd}")
                if name == "write" and len(args[0]) > 1:
                    data = memoryview(args[0])
                    written = real["write"](fd, data[: len(data) // 2])
                    self.take(f"half-way through write fd {fd}")
                    written += real["write"](fd, data[written:])
                    result = written
                else:
                    result = real[name](fd, *args, **kwargs)
                if name == "close":
                    self.fds.discard(fd)
                self.take(f"after {name} fd {fd}")
                return result

            return call

        for name in self.CALLS:
            wrapper = by_fd(name) if name in ("write", "fsync", "ftruncate", "close") else by_path(name)
            monkeypatch.setattr(os, name, wrapper)

        save = run.save_checkpoint

        def counted(run_dir, state, *args, **kwargs):
            self.in_progress = int(state.step)
            result = save(run_dir, state, *args, **kwargs)
            self.done = int(state.step)
            return result

        monkeypatch.setattr(run, "save_checkpoint", counted)


def _final(run_dir: pathlib.Path):
    """The checkpoint's state leaves (keys as their data) and its metadata and history."""
    state = run.load_run(run_dir)[3]
    _, meta, history = checkpoint.load_checkpoint(run_dir, state)
    leaves = [
        np.asarray(jax.random.key_data(x) if checkpoint._is_key(x) else x)
        for x in jax.tree.leaves(eqx.filter(state, eqx.is_array))
    ]
    return leaves, meta, history


def _assert_same_run(run_dir: pathlib.Path, reference) -> None:
    leaves, meta, history = _final(run_dir)
    ref_leaves, ref_meta, ref_history = reference
    assert meta["step"] == ref_meta["step"] == 20
    assert len(leaves) == len(ref_leaves)
    for a, b in zip(leaves, ref_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert sorted(history) == sorted(ref_history)
    for name in ref_history:
        a, b = history[name], ref_history[name]
        assert a.dtype == b.dtype and a.shape == b.shape == (20,) and np.array_equal(a, b), name
    assert not list(run_dir.glob("*.tmp")), "a temporary file of a killed write was left behind"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.npz", "config.json"]


def _record(monkeypatch, root: pathlib.Path, action, done: int = 0) -> Snapshots:
    snapshots = Snapshots(root)
    snapshots.done = snapshots.in_progress = done
    with monkeypatch.context() as patch:
        snapshots.wrap(patch)
        snapshots.take("start")
        action()
        snapshots.take("end")
    assert not snapshots.untracked, f"the run directory changed outside the wrapped calls: {snapshots.untracked}"
    return snapshots


def _resume_every_snapshot(snapshots: Snapshots, tmp_path: pathlib.Path, reference, capsys) -> int:
    """Resume from every distinct snapshot: it must continue from its last completed checkpoint (or
    the one whose rename had happened) and end exactly as `reference`. Returns the number resumed."""
    seen = set()
    resumed = 0
    for label, disk, done, in_progress in snapshots.taken:
        if disk in seen:
            continue
        seen.add(disk)
        where = tmp_path / f"snapshot{resumed}"
        resumed += 1
        _restore(disk, where)
        capsys.readouterr()
        if (where / run.CONFIG).exists():
            run.train(TrainConfig(resume=where, progress=False, evaluate=False))
            out = capsys.readouterr().out
            found = re.search(rf"resuming {re.escape(str(where))} at step (\d+) of 20", out)
            if found is None:
                assert f"no checkpoint in {where} yet" in out, (label, out)
            step = int(found.group(1)) if found else 0
        else:  # killed before the run's config was in place: the command is run again
            assert cli.main([*ARGV, "--out", str(where)]) == 0, label
            step = 0
        assert done <= step <= in_progress, f"killed {label}: resumed at step {step}, the last checkpoint was {done}"
        _assert_same_run(where, reference)
    return resumed


def test_killed_at_every_write_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    root = tmp_path / "run"
    snapshots = _record(monkeypatch, root, lambda: cli.main([*ARGV, "--out", str(root)]))
    reference = _final(root)
    assert snapshots.done == 20
    # Every one of the 4 checkpoints (and the config) was seen half-written, and a kill before the
    # config (no run directory, an empty one) is covered too.
    labels = [label for label, *_ in snapshots.taken]
    assert sum(label.startswith("half-way") for label in labels) >= 5
    assert snapshots.taken[0][1] is None and any(disk == () for _, disk, *_ in snapshots.taken)
    assert _resume_every_snapshot(snapshots, tmp_path, reference, capsys) >= 20


def _save_legacy(run_dir: pathlib.Path, state, meta: dict, history: dict, meta_step: int | None = None) -> None:
    """A checkpoint as older versions wrote it: three files, written one after another."""
    with open(run_dir / checkpoint.LEGACY_STATE, "wb") as f:
        eqx.tree_serialise_leaves(f, state, filter_spec=checkpoint._write_leaf)
    step = meta["step"] if meta_step is None else meta_step
    (run_dir / checkpoint.LEGACY_META).write_text(json.dumps({**meta, "step": step}))
    np.savez(run_dir / checkpoint.LEGACY_HISTORY, **history)


def _legacy_copy(snapshots: Snapshots, step: int, where: pathlib.Path, meta_step: int | None = None) -> None:
    """The run as the older layout would have held it at `step` (from a recorded snapshot)."""
    disk = next(
        disk for _, disk, done, _ in snapshots.taken if done == step and disk and "checkpoint.npz" in dict(disk)
    )
    _restore(disk, where)
    state = run.load_run(where)[3]
    _, meta, history = checkpoint.load_checkpoint(where, state)
    assert meta["step"] == step
    (where / checkpoint.CHECKPOINT).unlink()
    _save_legacy(where, state, meta, history, meta_step)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """An uninterrupted run with snapshots after each checkpoint (no wrapping of writes)."""
    root = tmp_path_factory.mktemp("reference") / "run"
    patch = pytest.MonkeyPatch()
    snapshots = Snapshots(root)
    save = run.save_checkpoint

    def saving(run_dir, state, *args, **kwargs):
        save(run_dir, state, *args, **kwargs)
        snapshots.done = int(state.step)
        snapshots.take(f"after checkpoint {int(state.step)}")

    patch.setattr(run, "save_checkpoint", saving)
    try:
        assert cli.main([*ARGV, "--out", str(root)]) == 0
    finally:
        patch.undo()
    return snapshots, _final(root)


def test_legacy_run_killed_at_every_write_while_resuming(recorded, tmp_path, monkeypatch, capsys):
    """A run saved by an older version at step 10, resumed, and killed at every write of the resumed
    run (the legacy files are removed once the first new checkpoint is in place)."""
    snapshots, reference = recorded
    legacy = tmp_path / "legacy"
    _legacy_copy(snapshots, 10, legacy)
    resuming = _record(
        monkeypatch,
        legacy,
        lambda: run.train(TrainConfig(resume=legacy, progress=False, evaluate=False)),
        done=10,
    )
    assert f"resuming {legacy} at step 10 of 20" in capsys.readouterr().out
    assert sorted(p.name for p in legacy.iterdir()) == ["checkpoint.npz", "config.json"]
    removals = [label for label, *_ in resuming.taken if label.startswith("after unlink")]
    assert len(removals) == 3  # checkpoint.json, checkpoint.eqx, history.npz
    _assert_same_run(legacy, reference)
    assert _resume_every_snapshot(resuming, tmp_path, reference, capsys) >= 15


def test_legacy_run_killed_between_its_state_and_metadata(recorded, tmp_path, capsys):
    """The failure of the older layout: the state (and the history, written first) of step 15, the
    metadata of step 10. The state's step is the truth: the run resumes at 15 with 15 history entries."""
    snapshots, reference = recorded
    legacy = tmp_path / "legacy"
    _legacy_copy(snapshots, 15, legacy, meta_step=10)
    assert run.train(TrainConfig(resume=legacy, progress=False, evaluate=False)) == legacy
    assert f"resuming {legacy} at step 15 of 20" in capsys.readouterr().out
    _assert_same_run(legacy, reference)
    assert not (legacy / checkpoint.LEGACY_STATE).exists() and not (legacy / checkpoint.LEGACY_HISTORY).exists()


def test_legacy_run_without_its_history(recorded, tmp_path, capsys):
    """A run of the older layout whose history.npz is gone: the resumed run keeps every later entry
    at its step (the lost ones are NaN) and its state is that of the uninterrupted run."""
    snapshots, (ref_leaves, _, ref_history) = recorded
    legacy = tmp_path / "legacy"
    _legacy_copy(snapshots, 15, legacy)
    (legacy / checkpoint.LEGACY_HISTORY).unlink()
    run.train(TrainConfig(resume=legacy, progress=False, evaluate=False))
    assert f"resuming {legacy} at step 15 of 20" in capsys.readouterr().out
    leaves, meta, history = _final(legacy)
    assert meta["step"] == 20 and all(np.array_equal(a, b) for a, b in zip(leaves, ref_leaves, strict=True))
    assert sorted(history) == sorted(ref_history)
    for name, values in history.items():
        assert values.shape == (20,) and np.all(np.isnan(values[:15])), name
        assert np.array_equal(values[15:], ref_history[name][15:]), name


def test_legacy_run_loads_for_eval_sample_and_plot(recorded, tmp_path, monkeypatch):
    """eval, sample and plot read the state through `load_run`, plot the history too: from the
    older layout's files, cut to the state's step."""
    snapshots, reference = recorded
    legacy = tmp_path / "legacy"
    _legacy_copy(snapshots, 20, legacy)
    leaves, meta, history = _final(legacy)
    assert meta["step"] == 20 and all(np.array_equal(a, b) for a, b in zip(leaves, reference[0], strict=True))
    shown = {}

    def make_figures(model, problem, history, *args, **kwargs):
        shown.update(history)
        return []

    from ctjax.experiments import _plots

    monkeypatch.setattr(_plots, "make_figures", make_figures)
    run.plot(run.PlotConfig(run=legacy))
    assert sorted(shown) == sorted(reference[2])
    assert all(np.array_equal(shown[k], reference[2][k]) for k in shown)
    # sample draws from the legacy state: the same samples as from the new-format run.
    new_run = tmp_path / "new"
    _restore(next(d for _, d, done, _ in snapshots.taken if done == 20 and d and "checkpoint.npz" in dict(d)), new_run)
    for source in (legacy, new_run):
        run.sample(run.SampleConfig(run=source, num=5, steps=2, out=source / "samples.npy"))
    assert np.array_equal(np.load(legacy / "samples.npy"), np.load(new_run / "samples.npy"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_are_readable_as_the_umask_allows(umask, mode, tmp_path):
    root = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert cli.main([*ARGV, "--out", str(root)]) == 0
        checkpoint._atomic_write(root / run.EVAL, b"{}")  # what `ctjax eval` writes through
    finally:
        os.umask(old)
    files = sorted(root.iterdir())
    assert [p.name for p in files] == ["checkpoint.npz", "config.json", "eval.json"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}
    assert root.stat().st_mode & 0o777 == mode | 0o111 & ~umask
