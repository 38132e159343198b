"""Developer sessions. `nox` alone runs what CI runs: lint, tests, property_tests, docs."""

import os

import nox


nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests", "property_tests", "docs"]
nox.options.reuse_existing_virtualenvs = True

# Two workers for the 2-core CI machine; compile time dominates, so the split is per test.
XDIST = ["-n", "2", "--dist", "load"]


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (pytest tests/)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests", *XDIST, *session.posargs)


@nox.session
def property_tests(session: nox.Session) -> None:
    """Hypothesis suites; CTJAX_HYPOTHESIS_PROFILE=thorough for many more examples."""
    session.install("-e", ".[test]")
    env = {"CTJAX_HYPOTHESIS_PROFILE": os.environ.get("CTJAX_HYPOTHESIS_PROFILE", "ci")}
    session.run("pytest", "property_tests", *XDIST, *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (style, imports) and pyright (types)."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "ctjax", "tests", "property_tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "ctjax", "tests", "property_tests", "benchmarks", "noxfile.py")
    session.run("pyright", "ctjax")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site"))


BENCHMARKS = ["flow_throughput", "train_throughput", "staged_compile", "conv_in_scan"]


# A plain pip venv: pip installs the CPU build of PyTorch from the `bench` extra (uv would resolve
# the multi-GB CUDA build). PyTorch is in no other extra and in no other session.
@nox.session(venv_backend="venv")
def bench(session: nox.Session) -> None:
    """Benchmarks (about 10 minutes on the 2-core machine): print tables and write benchmarks/results/*.json.

    `nox -s bench -- train_throughput` runs only the named scripts. The long quality and scaling
    studies are manual: `python benchmarks/quality_gmm.py`, `python benchmarks/scaling.py`,
    `python benchmarks/cli_defaults.py` (how the command line's defaults were chosen, about 30 minutes)
    and `python benchmarks/xla_cpu_flags.py` (XLA's CPU flags on the training step, about 5 minutes).
    """
    session.install("-e", ".[bench]")
    for name in session.posargs or BENCHMARKS:
        if name not in BENCHMARKS:
            session.error(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")
        session.run("python", f"benchmarks/{name}.py")
