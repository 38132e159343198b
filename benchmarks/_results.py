"""Shared by the study scripts: rows merged into one JSON file under a lock, written atomically, so
that runs of one study can go in parallel and a killed run never leaves a half-written file."""

import contextlib
import fcntl
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence


@contextlib.contextmanager
def locked(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def update(path: pathlib.Path, fn: Callable[[dict], None]) -> None:
    """Load `path` (or `{"rows": []}`), apply `fn` to it in place and write it back, under the lock."""
    with locked(path):
        data = json.loads(path.read_text()) if path.exists() else {"rows": []}
        fn(data)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


def save_row(path: pathlib.Path, row: dict, key: Sequence[str] = ("method", "variant", "seed")) -> None:
    """Add `row`, replacing any row with the same values of the `key` fields."""

    def add(data):
        same = lambda r: all(r.get(k) == row.get(k) for k in key)
        data["rows"] = [r for r in data["rows"] if not same(r)] + [row]

    update(path, add)
