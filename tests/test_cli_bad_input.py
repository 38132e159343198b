"""Bad inputs to `ctjax train` that used to end badly (a traceback, a silent wrong run, or an error
blaming another option): each gets one `ctjax: error:` line, exit status 2, naming the option and the
fix, before anything is trained."""

import jax
import numpy as np
import pytest

from ctjax.experiments import _cli as cli, _run as run, _setup as setup
from ctjax.experiments._config import TrainConfig

from .helpers import cli_error as _cli_error


TINY = ["--model.width", "16", "--model.depth", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]


@pytest.fixture
def float32():
    """Training in float32, as on the command line without --x64 (the test process runs in float64)."""
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if the problem is built: the error must come before."""

    def build_problem(cfg):
        raise AssertionError("the problem was built before the bad option was rejected")

    monkeypatch.setattr(run, "build_problem", build_problem)


def _train(*options, out):
    return ["train", *options, "--steps", "4", "--out", str(out), *TINY]


def test_complex_data(tmp_path, capsys):
    path = tmp_path / "z.npy"
    np.save(path, np.exp(1j * np.linspace(0, 3, 40)).reshape(20, 2))
    line = _cli_error(_train("--data", str(path), out=tmp_path / "run"), capsys)
    assert line == (
        f"ctjax: error: --data {path}: the array is complex (complex128); the points must be real: save the real "
        "and imaginary parts as separate coordinates, np.concatenate([x.real, x.imag], axis=1)."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["weights", "means", "covs"])
def test_complex_target(name, tmp_path, capsys):
    arrays = {"weights": np.array([0.5, 0.5]), "means": np.zeros((2, 2)), "covs": np.stack([np.eye(2)] * 2)}
    arrays[name] = arrays[name].astype(np.complex64)
    path = tmp_path / "mix.npz"
    np.savez(path, **arrays)
    line = _cli_error(_train("--target", str(path), out=tmp_path / "run"), capsys)
    assert line == (
        f"ctjax: error: --target {path}: `{name}` is complex (complex64); weights, means and covs must be real arrays."
    )


def test_out_is_an_existing_file(tmp_path, capsys, nothing_built):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    line = _cli_error(_train(out=path), capsys)
    assert line == (
        f"ctjax: error: --out {path} is a file; --out names the run directory: pass a path that is a directory "
        "or does not exist yet."
    )
    line = _cli_error(_train(out=path / "run"), capsys)
    assert line.startswith(f"ctjax: error: --out {path / 'run'} cannot be created: {path} is a file;")
    assert path.read_text() == "mine"


def test_zero_variance_data(tmp_path, capsys):
    path = tmp_path / "same.npy"
    np.save(path, np.full((30, 3), 2.5))
    line = _cli_error(_train("--data", str(path), out=tmp_path / "run"), capsys)
    assert line.startswith(f"ctjax: error: --data {path}: the points have zero variance")
    assert "pass points that vary" in line and "--model.sigma-data" not in line
    assert not (tmp_path / "run").exists()


def _cloud(tmp_path, scale, offset=0.0):
    points = np.random.default_rng(0).normal(size=(50, 2)) * scale + offset
    path = tmp_path / "cloud.npy"
    np.save(path, points)
    return path, points


def test_data_too_large_for_float32(tmp_path, capsys, float32):
    path, points = _cloud(tmp_path, 1e30)
    line = _cli_error(_train("--data", str(path), out=tmp_path / "run"), capsys)
    magnitude, sigma = np.max(np.abs(points)), np.sqrt(np.mean(np.var(points, axis=0)))
    assert line.startswith(
        f"ctjax: error: --data {path}: the data's largest magnitude is {magnitude:.3g} (sigma_data {sigma:.3g}): "
        "too large for float32 training, whose squared losses and squared gradients overflow above 4.3e+09"
    )
    assert line.endswith(f"rescale the data (e.g. divide it by {magnitude:.1g}) or pass --x64 to train in float64.")
    assert "--optim.lr" not in line
    assert not (tmp_path / "run").exists()


def test_data_scale_limit_in_float32(tmp_path, float32):
    """The largest magnitude float32 training accepts is max**(1/4) = 2**32 (fourth powers stay finite)."""
    assert setup.scale_limits(np.float32)[1] == pytest.approx(2.0**32, rel=1e-6)
    path, points = _cloud(tmp_path, 1.0, offset=0.99 * 2.0**32)
    problem = setup.build_problem(TrainConfig(data=path, holdout=0.0))
    assert problem.sigma_data == pytest.approx(np.sqrt(np.mean(np.var(points, axis=0))), rel=1e-12)
    path, _ = _cloud(tmp_path, 1.0, offset=1.01 * 2.0**32)
    with pytest.raises(setup.ConfigError, match="too large for float32 training"):
        setup.build_problem(TrainConfig(data=path))
    # With --x64 the same data trains in float64.
    assert setup.build_problem(TrainConfig(data=path, x64=True)).sigma_data > 0


def test_data_too_large_even_for_float64(tmp_path, capsys):
    path, _ = _cloud(tmp_path, 1e100)
    line = _cli_error(_train("--data", str(path), out=tmp_path / "run"), capsys)
    assert f"--data {path}: the data's largest magnitude is" in line and "too large for float64 training" in line
    assert "--x64" not in line and "rescale the data" in line
    assert not (tmp_path / "run").exists()


def test_data_too_small_for_float32(tmp_path, capsys, float32):
    path, points = _cloud(tmp_path, 1e-25)
    line = _cli_error(_train("--data", str(path), out=tmp_path / "run"), capsys)
    sigma = np.sqrt(np.mean(np.var(points, axis=0)))
    assert line.startswith(
        f"ctjax: error: --data {path}: the data's scale sigma_data is {sigma:.3g}: too small for float32 training"
    )
    assert line.endswith(f"(e.g. multiply it by {1 / sigma:.1g}) or pass --x64 to train in float64.")
    assert not (tmp_path / "run").exists()


def test_target_too_large_for_float32(tmp_path, capsys, float32):
    path = tmp_path / "far.npz"
    np.savez(path, weights=np.array([0.5, 0.5]), means=np.array([[1e30, 0.0], [-1e30, 0.0]]), covs=np.ones((2, 2)))
    line = _cli_error(_train("--target", str(path), out=tmp_path / "run"), capsys)
    # sigma_data = sqrt(trace of the covariance / d) = sqrt((2 + 1e60) / 2), computed in float64.
    assert line.startswith(
        f"ctjax: error: --target {path}: the data's largest magnitude is 1e+30 (sigma_data 7.07e+29)"
    )
    assert "too large for float32 training" in line and "or pass --x64" in line
    assert not (tmp_path / "run").exists()


def test_sigma_data_too_large_for_float32(tmp_path, capsys, float32):
    line = _cli_error(_train("--model.sigma-data", "1e30", out=tmp_path / "run"), capsys)
    assert line.startswith("ctjax: error: --model.sigma-data 1e+30: float32 training needs a data scale between")
    assert not (tmp_path / "run").exists()


def test_zero_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _cli_error(["train", "--steps", "0", *TINY], capsys)
    assert line == "ctjax: error: --steps must be at least 1, got 0."
    assert not (tmp_path / "runs").exists()


class _Compiled(Exception):
    """Raised in place of the first compiled chunk: everything before it has run."""


@pytest.mark.filterwarnings("always::UserWarning")
def test_batch_larger_than_the_data_is_one_warning_line(tmp_path, capsys, monkeypatch):
    from ctjax.training import _fit

    def compiled(*args, **kwargs):
        raise _Compiled

    monkeypatch.setattr(_fit, "run_chunk", compiled)
    path = tmp_path / "small.npy"
    np.save(path, np.random.default_rng(0).standard_normal((10, 2)))
    with pytest.raises(_Compiled):
        cli.main(_train("--data", str(path), out=tmp_path / "run"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        # 8 of the 10 points: the default --holdout keeps 2 for evaluation.
        "ctjax: warning: `batch_size` (32) is larger than the data set (8 points): each batch repeats points "
        "(batches are drawn with replacement)."
    ]
