"""The command line under random and malformed options: every command line either gets as far as
training (everything validated and built) or fails with one `ctjax: error:` line and status 2;
never a traceback.

Training itself is replaced by a stub that stops the run as soon as `fit` is called, so an example
costs the parsing, the validation and the construction of the problem, model and trainer.
"""

import contextlib
import io
import os
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import given, HealthCheck, settings

from ctjax.experiments import _cli as cli, _run as run


class _ReachedTraining(Exception):
    pass


def _stub_fit(*args, **kwargs):
    raise _ReachedTraining


def _int():
    return st.integers(-3, 40).map(str)


def _float():
    return st.one_of(
        st.floats(-10, 10, allow_nan=False).map(repr),
        st.sampled_from(["0", "1e-3", "nan", "inf", "-inf", "1e400"]),
    )


def _junk():
    return st.one_of(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
        st.sampled_from(["", "-", "--", "None", "1.5.2", "0x10", "[]", "{}", "--steps", "é", "\x00"]),
    )


def _value(kind):
    """Mostly well-formed values (so that examples get past the parser), sometimes junk."""
    return st.integers(0, 5).flatmap(lambda i: _junk() if i == 0 else kind())


# (option, kind of valid value); every option also gets malformed values.
TRAIN_OPTIONS = [
    ("--preset", lambda: st.sampled_from(["gmm2d", "gaussian", "digits", "mnist"])),
    ("--method", lambda: st.sampled_from(["cd", "ct", "ict", "staged", "staged-shared", "magic"])),
    ("--steps", _int),
    ("--batch-size", _int),
    ("--dim", _int),
    ("--seed", _int),
    ("--checkpoint-every", _int),
    ("--chunk-size", _int),
    ("--devices", _int),
    ("--data", lambda: st.sampled_from(["/nonexistent/x.npy", "points.npy", "bad.npy", "."])),
    ("--target", lambda: st.sampled_from(["/nonexistent/m.npz", "points.npy", "mix.npz"])),
    ("--resume", lambda: st.sampled_from(["/nonexistent/run", ".", "runs"])),
    ("--model.width", _int),
    ("--model.depth", _int),
    ("--model.dropout", _float),
    ("--model.embedding", lambda: st.sampled_from(["fourier", "sinusoidal", "rff"])),
    ("--model.sigma-data", _float),
    ("--model.architecture", lambda: st.sampled_from(["mlp", "conv", "unet"])),
    ("--optim.lr", _float),
    ("--optim.warmup", _int),
    ("--optim.final-lr-fraction", _float),
    ("--optim.grad-clip", _float),
    ("--cd.num-scales", _int),
    ("--cd.mu", _float),
    ("--cd.solver", lambda: st.sampled_from(["euler", "heun", "rk4"])),
    ("--ct.s0", _int),
    ("--ct.s1", _int),
    ("--ct.mu0", _float),
    ("--ict.s0", _int),
    ("--ict.p-mean", _float),
    ("--ict.p-std", _float),
    ("--ict.huber-c", _float),
    ("--staged.num-stages", _int),
    ("--staged.c0", _float),
    ("--staged.c1", _float),
]
FLAGS = ["--x64", "--no-x64", "--no-progress", "--evaluate", "--no-evaluate", "--help-me", "--steps"]


@st.composite
def train_argv(draw):
    argv = ["train"]
    for option, kind in draw(st.lists(st.sampled_from(TRAIN_OPTIONS), max_size=6)):
        argv += [option, draw(_value(kind))]
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(FLAGS)))
    # Keep whatever does get built small.
    return [*argv, "--model.width", "4", "--model.depth", "1", "--staged.width", "4", "--no-progress"]


@st.composite
def other_argv(draw):
    command = draw(st.sampled_from(["eval", "sample", "plot", "frobnicate", "", "--steps"]))
    argv = [command] if command else []
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(["/nonexistent/run", ".", "runs", ""])))
    for option in draw(st.lists(st.sampled_from(["--num", "--repeats", "--steps", "--seed", "--out"]), max_size=3)):
        argv += [option, draw(st.one_of(_int(), _junk()))]
    return argv


def _check(argv, tmp):
    """Run the command line in `tmp`; return 'ran', or the one error line."""
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except _ReachedTraining:
                return "ran"
    finally:
        os.chdir(cwd)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code == 0:  # e.g. a help text
        return "ran"
    assert code == 2, (argv, code, err.getvalue())
    assert len(lines) == 1 and lines[0].startswith("ctjax: error:"), (argv, err.getvalue())
    return lines[0]


@pytest.fixture(scope="module")
def workdir():
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "points.npy"), np.random.default_rng(0).normal(size=(20, 3)))
        np.save(os.path.join(tmp, "bad.npy"), np.array([[0.0, np.nan], [1.0, 2.0]]))
        np.savez(os.path.join(tmp, "mix.npz"), weights=np.array([1.0]), means=np.zeros((1, 2)), covs=np.eye(2)[None])
        yield tmp


_SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@settings(_SETTINGS, max_examples=60)
@given(argv=train_argv())
def test_train_options_run_or_fail_in_one_line(argv, workdir, monkeypatch_fit):
    _check(argv, workdir)


@settings(_SETTINGS, max_examples=25)
@given(argv=other_argv())
def test_other_commands_run_or_fail_in_one_line(argv, workdir):
    _check(argv, workdir)


@pytest.fixture(scope="module")
def monkeypatch_fit():
    mp = pytest.MonkeyPatch()
    mp.setattr(run, "fit", _stub_fit)
    yield
    mp.undo()
