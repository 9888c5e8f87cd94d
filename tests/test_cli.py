"""The analytics-sdk command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from analytics_sdk.cli import main


def test_demo_runs_and_reports_exact_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "1", "--threads", "2", "--users", "20"]) == 0
    out = capsys.readouterr().out
    for heading in ("Daily totals", "Hourly page views", "Top users", "Unique users", "events/s"):
        assert heading in out
    assert "(exact)" in out
    assert "MISMATCH" not in out
    assert "23:00" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--seconds", "0"], "out of range; accepted: more than 0, at most 3600"),
        (["demo", "--seconds", "soon"], "'soon' is not a number"),
        (["demo", "--threads", "0"], "0 is out of range; accepted: 1 to 64"),
        (["nope"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "analytics_sdk", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("analytics-sdk ")
