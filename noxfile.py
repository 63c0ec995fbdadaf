"""Developer sessions: ``nox -s tests lint typecheck docs bench``."""

from __future__ import annotations

import pathlib

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True

ROOT = pathlib.Path(__file__).parent
TEST_DEPS = ["pytest>=8.3", "pytest-trio>=0.8", "hypothesis>=6.100", "jsonschema>=4.20"]
# Every extra is installed for the tests: the integrations' tests run, never skipped.
EXTRAS = ".[cli,mcp,redis,dask,otel,cron]"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite; every backend-neutral test runs on trio and on asyncio."""
    session.install("-e", EXTRAS, *TEST_DEPS, "opentelemetry-sdk>=1.30")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and its tests."""
    session.install(
        "-e", EXTRAS, *TEST_DEPS, "opentelemetry-sdk>=1.30", "mypy>=1.13", "types-jsonschema"
    )
    session.run("mypy", "--strict", "src", "tests")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation in strict mode (warnings are errors)."""
    session.install("-e", ".[docs,cli]")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark (floors, peers and trioflow in one run) and write bench/results.md."""
    session.install("-e", ".[bench,cli,mcp,redis,dask]")
    session.run("python", "bench/run_all.py", *session.posargs)
