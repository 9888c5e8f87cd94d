"""Developer sessions; CI (.ci/run) runs the same commands.

``tests`` runs the suite once per supported CPython (3.10 to 3.13). Interpreters installed
under pyenv (``~/.pyenv/versions/3.X.*``) are found even when pyenv does not put them on
``PATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.default_venv_backend = "venv"

DEV = ".[dev]"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _pyenv_bins() -> list[str]:
    """The newest pyenv build of each supported version: ``pythonX.Y`` in its ``bin``."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for version in PYTHONS:
        builds = sorted(root.glob(f"{version}.*/bin/python{version}"))
        if builds:
            found.append(str(builds[-1].parent))
    return found


# nox looks interpreters up as pythonX.Y on PATH; pyenv's shims only answer for the active
# version, so the real binaries go first.
os.environ["PATH"] = os.pathsep.join([*_pyenv_bins(), os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
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
