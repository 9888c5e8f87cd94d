"""The repository keeps its promises: CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def test_the_readme_demo_command_uses_the_console_script() -> None:
    assert any(c.endswith("analytics-sdk demo") for c in readme_commands())


def test_importing_the_sdk_loads_no_driver_and_creates_no_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, analytics_sdk, analytics_sdk.api as api; "
        "assert api._client is None; "
        "loaded = {'redis', 'psycopg', 'psycopg_pool'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
