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


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print numbers and write benchmarks/results/*.json."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/flow_throughput.py", *session.posargs)
