"""Development sessions (``nox -s NAME``): tests, tests-fast, lint, typecheck, migrations."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "migrations", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (real servers on real sockets, real SQLite files), in the
    three pytest-xdist workers CI uses (``-- -n 0`` runs it in one process)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "3", *session.posargs)


@nox.session(name="tests-fast")
def tests_fast(session: nox.Session) -> None:
    """The suite without the tests marked ``slow`` (long races, stateful runs, kill -9)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "3", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint rules and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy in strict mode over the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def migrations(session: nox.Session) -> None:
    """Apply every migration to a fresh SQLite catalog and check it matches the models."""
    session.install("-e", ".")
    tmp = session.create_tmp()
    session.run("cloudimg", "db", "upgrade", "--data-root", f"{tmp}/data")
    session.run("cloudimg", "db", "check", "--data-root", f"{tmp}/data")
