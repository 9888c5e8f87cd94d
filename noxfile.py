"""Developer sessions; CI (.ci/run) runs the same commands.

``tests`` runs the suite once per supported CPython (3.10 to 3.13). Interpreters installed
under pyenv (``~/.pyenv/versions/3.X.*``) are found even when pyenv does not put them on
``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
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


COVERAGE_MIN_LINES = 95.0
COVERAGE_MIN_BRANCHES = 92.0


@nox.session
def coverage(session: nox.Session) -> None:
    """The suite under coverage in every process it starts (threads, forks, multiprocessing
    children, subprocesses, SIGTERMed workers); fails below the line or branch minimum."""
    session.install("-e", DEV)
    session.run("coverage", "erase")
    # Whether the tests pass is the test sessions' verdict; under tracing a few timing- and
    # process-sensitive tests can fail on a loaded machine, and the figures still count.
    session.run("coverage", "run", "-m", "pytest", *session.posargs, success_codes=[0, 1])
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")
    session.run("coverage", "json", "--quiet", "-o", "coverage.json")
    totals = json.loads(Path("coverage.json").read_text())["totals"]
    # coverage's own fail_under blends lines and branches into one figure: check each.
    lines = 100.0 * totals["covered_lines"] / totals["num_statements"]
    branches = 100.0 * totals["covered_branches"] / totals["num_branches"]
    session.log(f"coverage: {lines:.2f}% of lines, {branches:.2f}% of branches")
    short = []
    if lines < COVERAGE_MIN_LINES:
        short.append(f"lines {lines:.2f}% < {COVERAGE_MIN_LINES}%")
    if branches < COVERAGE_MIN_BRANCHES:
        short.append(f"branches {branches:.2f}% < {COVERAGE_MIN_BRANCHES}%")
    if short:
        session.error("coverage below the minimum: " + ", ".join(short))


# The functions that move counts on the exactly-once path (mutmut names: module.x_function
# or module.xǁClassǁmethod); each mutant runs only the tests that call its function.
MUTATED = {
    "scheduler.xǁSchedulerǁ": [
        "push",
        "flush_store",
        "_store_step",
        "_apply_one",
        "_claims_to_apply",
        "flush_now",
    ],
    "aggregator.xǁAggregatorǁ": ["add", "_take", "next_push", "push_done", "local_counts"],
    "aggregator.x_": ["_add"],
    "query.xǁQueryEngineǁ": [
        "_read",
        "_read_tiers",
        "_read_quiet",
        "_attempt",
        "hourly_counts",
        "user_counts",
        "fleet_totals",
    ],
    "query.x_": ["_add"],
    "backends.redis.xǁRedisCounterStoreǁ": [
        "push",
        "has_push",
        "claim_batches",
        "_claim_shard",
        "claimed_ids",
        "read_claim",
        "ack",
        "_read_pending",
    ],
    "backends.redis.x_": ["_decode_hash"],
    "backends.postgres.xǁPostgresSinkǁ": [
        "apply",
        "_apply",
        "applied",
        "snapshot",
        "_snapshot",
        "_mark",
        "_hold",
    ],
    "backends.postgres.xǁ_PostgresSnapshotǁ": [
        "hourly_counts",
        "user_counts",
        "event_totals",
        "will_ask",
        "applied",
        "_answer",
        "committed_since_entered",
    ],
    "backends.postgres.x_": ["_hourly_rows"],
}
MUTATED_FUNCTIONS = [
    f"analytics_sdk.{where}{name}__mutmut_*" for where, names in MUTATED.items() for name in names
]


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing of the exactly-once path; lists the surviving mutants.

    Slow (about an hour on two cores): not part of every CI run. ``nox -s mutation --
    NAME...`` runs chosen mutants only. docs/testing-quality.md reports the last run.
    """
    session.install("-e", DEV, "mutmut>=3.8")
    shutil.rmtree("mutants", ignore_errors=True)  # tests change: start from a clean slate
    session.run("mutmut", "run", *(session.posargs or MUTATED_FUNCTIONS))
    session.run("mutmut", "results")
