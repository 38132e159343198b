"""The documentation covers the public API, and every function the paper map names exists."""

import importlib
import inspect
import pathlib
import re

import numpy as np
import pytest

import ctjax


DOCS = pathlib.Path(__file__).parent.parent / "docs"
MODULES = ["ctjax", "ctjax.training", "ctjax.theory", "ctjax.metrics", "ctjax.presets"]


def _public_names(module_name):
    module = importlib.import_module(module_name)
    for name, obj in vars(module).items():
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        # Defined in this module (or, for the top level, in a private ctjax._* module): helpers
        # imported from elsewhere are not part of this module's API.
        home = "ctjax._" if module_name == "ctjax" else module_name
        if getattr(obj, "__module__", "").startswith(home):
            yield f"{module_name}.{name}"


def _documented():
    text = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    return set(re.findall(r"^::: (ctjax[\w.]*)", text, flags=re.MULTILINE))


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_an_api_entry(module_name):
    missing = sorted(set(_public_names(module_name)) - _documented())
    assert not missing, f"public names without a `::: name` entry in docs/api/: {missing}"


def _exists(dotted):
    obj = ctjax
    for part in dotted.split(".")[1:]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_api_entries_resolve():
    documented = _documented()
    assert len(documented) >= 50
    missing = sorted(d for d in documented if not _exists(d))
    assert not missing, f"names in docs/api/ that do not exist: {missing}"


def test_paper_map_names_exist():
    text = (DOCS / "paper-map.md").read_text()
    names = set(re.findall(r"`(ctjax(?:\.\w+)+)", text))
    assert len(names) >= 20
    missing = sorted(d for d in names if not _exists(d))
    assert not missing, f"names on the paper map that do not exist: {missing}"


def test_getting_started_code_runs():
    """The page's Python blocks run as written, in order, and training lowers the loss."""
    text = (DOCS / "getting-started.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "getting-started.md", "exec"), namespace)
    loss = namespace["history"]["loss"]
    assert loss.shape == (400,) and np.all(np.isfinite(loss))
    assert loss[-100:].mean() < 0.5 * loss[:20].mean()
    assert namespace["one_step"].shape == namespace["two_step"].shape == (1000, 2)
    assert np.isfinite(namespace["w1"]) and np.all(np.isfinite(namespace["errors"]))


def test_training_page_example_runs():
    """The Training API page's minimal trainer on the shared core trains: the denoising loss at one
    time falls, and the EMA it inherits is there."""
    text = (DOCS / "api" / "training.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "training.md", "exec"), namespace)
    loss, state = namespace["history"]["loss"], namespace["state"]
    assert loss.shape == (50,) and np.all(np.isfinite(loss))
    assert loss[-10:].mean() < loss[:10].mean()
    assert int(state.step) == 50 and state.ema is not None and state.teacher is None
