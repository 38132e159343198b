"""A training process killed while it writes a checkpoint: the previous checkpoint is intact and
`--resume` continues from it. The kill is deterministic: the child's checkpoint writer stops half-way
through writing its second checkpoint and signals the parent, which then kills it.
(A kill simulated at every write boundary: tests/test_checkpoint_atomic.py.)"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np


TINY = ["--model.width", "16", "--model.depth", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]
CHUNKS = ["--steps", "20", "--chunk-size", "5", "--checkpoint-every", "5"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# A child process that trains through the command line, with `os.open`/`os.write` patched so
# that the write of its second checkpoint file stops half-way, tells the parent (a marker file), and
# waits to be killed.
CHILD = textwrap.dedent(
    """
    import os, pathlib, sys, time

    from ctjax.experiments import main

    marker = pathlib.Path(os.environ["CTJAX_TEST_MID_WRITE"])
    real_open, real_write = os.open, os.write
    checkpoints = []


    def opening(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if os.path.basename(os.fsdecode(path)).startswith("checkpoint.npz."):
            checkpoints.append(fd)
        return fd


    def stalling(fd, data):
        if len(checkpoints) < 2 or fd != checkpoints[1]:
            return real_write(fd, data)
        real_write(fd, data[: len(data) // 2])
        os.fsync(fd)
        marker.write_text(str(len(data)))
        time.sleep(600)


    os.open, os.write = opening, stalling
    sys.exit(main(sys.argv[1:]))
    """
)


def _meta(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("meta.json"))


def _env(**extra):
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(__file__), "..", ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "POT_BACKEND_DISABLE_PYTORCH": "1",
        **extra,
    }


def test_killed_while_writing_a_checkpoint(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "mid-write"
    argv = ["train", *CHUNKS, "--out", str(run_dir), *TINY]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        env=_env(CTJAX_TEST_MID_WRITE=str(marker)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.time() < deadline, "the child never reached its second checkpoint write"
            time.sleep(0.05)
        # The child is now blocked half-way through writing the checkpoint of step 10.
        partial = list(run_dir.glob("checkpoint.npz.*.tmp"))
        good = _digest(run_dir / "checkpoint.npz")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    # Half of the new checkpoint had been written to a temporary file beside the good one.
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < int(marker.read_text())
    # The last good checkpoint (step 5, with its 5 history entries) is intact; the resumed run loads
    # it (in a fresh process: this one runs in float64, the run in float32).
    assert _digest(run_dir / "checkpoint.npz") == good
    assert _meta(run_dir / "checkpoint.npz")["step"] == 5
    with np.load(run_dir / "checkpoint.npz") as saved:
        assert saved["history/loss"].shape == (5,)

    resumed = subprocess.run(
        [sys.executable, "-m", "ctjax", "train", "--resume", str(run_dir), "--no-progress", "--no-evaluate"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} at step 5 of 20" in resumed.stdout
    assert _meta(run_dir / "checkpoint.npz")["step"] == 20
    assert not list(run_dir.glob("*.tmp"))  # the partial write was cleaned up
    with np.load(run_dir / "checkpoint.npz") as saved:
        assert saved["history/loss"].shape == (20,) and np.all(np.isfinite(saved["history/loss"]))
