"""Developer sessions; CI (.ci/run) runs the same commands."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.default_venv_backend = "venv"

DEV = ".[dev]"


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", DEV)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", DEV)
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", DEV)
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
