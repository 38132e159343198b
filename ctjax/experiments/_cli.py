"""The `ctjax` command: train, eval, sample, plot."""

import contextlib
import io
import pathlib
import re
import sys
import warnings

import tyro

from ._checkpoint import CheckpointError
from ._config import EvalConfig, PlotConfig, SampleConfig, TrainConfig
from ._setup import ConfigError


_BOX = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛]")


def _one_line(text: str) -> str:
    """The gist of tyro's boxed error message, on one line."""
    lines = [_BOX.sub("", line).strip() for line in text.splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.startswith("For full helptext") and not re.fullmatch(r"[-=_ ]+", line)
    ]
    if not lines:
        return "invalid arguments (see --help)"
    # Title, then the first explanatory line.
    return " ".join(lines[:2]) if len(lines) > 1 else lines[0]


def parse(argv: list[str]):
    """Parse the command line; on bad options print one line and exit with status 2."""
    commands = {"train": TrainConfig, "eval": EvalConfig, "sample": SampleConfig, "plot": PlotConfig}
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.extras.subcommand_cli_from_dict(commands, prog="ctjax", args=argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            print(f"ctjax: error: {_one_line(captured.getvalue())}", file=sys.stderr)
        else:
            sys.stderr.write(captured.getvalue())
        raise


_PACKAGE = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _one_line_warnings():
    """ctjax's own warnings as one line, `ctjax: warning: ...` (Python's format adds the file, the
    line number and the source line); other libraries' warnings as they are."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if _PACKAGE in pathlib.Path(filename).resolve().parents:
            print(f"ctjax: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        yield


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = parse(args)
    from . import _run as run

    actions = {TrainConfig: run.train, EvalConfig: run.evaluate, SampleConfig: run.sample, PlotConfig: run.plot}
    try:
        with _one_line_warnings():
            actions[type(config)](config)
    except (ConfigError, CheckpointError, run.TrainingDiverged) as err:
        print(f"ctjax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
