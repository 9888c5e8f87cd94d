"""The repository keeps its promises: CI runs exactly the README's test command."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def test_the_readme_demo_command_uses_the_console_script() -> None:
    assert any(c.endswith(f"{DISTRIBUTION} demo") for c in readme_commands())


# `analytics-sdk` on PyPI is an unrelated project: the distribution has a name of its own.
DISTRIBUTION = "analytics-sdk-exact"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def pyproject_value(key: str) -> str:
    match = re.search(rf"^{re.escape(key)} = (.*)$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, key
    return match.group(1)


def test_the_distribution_name_is_ours_and_its_extras_refer_to_it() -> None:
    assert pyproject_value("name") == f'"{DISTRIBUTION}"'
    assert pyproject_value("all") == f'["{DISTRIBUTION}[redis,postgres,asyncio]"]'
    assert f'  "{DISTRIBUTION}[all]",' in (ROOT / "pyproject.toml").read_text().splitlines()


def test_the_command_is_named_after_the_distribution_with_the_short_alias() -> None:
    from analytics_sdk.cli import PROG

    assert PROG == DISTRIBUTION
    assert pyproject_value(DISTRIBUTION) == '"analytics_sdk.cli:main"'
    assert pyproject_value("analytics-sdk").startswith('"analytics_sdk.cli:main"')


def test_every_install_line_and_command_in_the_docs_uses_the_distribution_name() -> None:
    installs = commands = 0
    for page in DOCS:
        for line in page.read_text().splitlines():
            for match in re.finditer(r"pip install ([^&#`]*)", line):
                installs += 1
                for target in match.group(1).split():
                    if target.startswith("-") or target in (".", '".[dev]"'):
                        continue
                    assert re.fullmatch(rf"[\"']?{DISTRIBUTION}(\[[a-z,]+\])?[\"']?", target), (
                        page,
                        line,
                    )
            for match in re.finditer(
                r"(?<![\w./-])(analytics-sdk[\w-]*) (demo|migrate|query|worker|dashboard)", line
            ):
                commands += 1
                assert match.group(1) == DISTRIBUTION, (page, line)
    assert installs >= 6
    assert commands >= 5


def test_the_docs_say_up_front_that_the_import_name_differs() -> None:
    for page in (ROOT / "README.md", ROOT / "docs" / "quickstart.md", ROOT / "docs" / "index.md"):
        text = page.read_text()
        assert f"`{DISTRIBUTION}`" in text[:2000], page
        assert "`analytics_sdk`" in text[:2000], page


def test_a_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import analytics_sdk.backends as backends
    from analytics_sdk.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(ConfigurationError, match=re.escape(f"pip install '{DISTRIBUTION}[redis]'")):
        backends.store_from_url("redis://127.0.0.1:6379/0", lambda: 0.0)


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


def test_importing_the_sdk_and_its_integrations_loads_no_framework() -> None:
    import subprocess
    import sys

    frameworks = ["django", "flask", "starlette", "fastapi", "werkzeug", "celery"]
    code = (
        "import sys, analytics_sdk, analytics_sdk.integrations, analytics_sdk.integrations.asgi, "
        "analytics_sdk.integrations.wsgi; "
        "import analytics_sdk.integrations.fastapi, analytics_sdk.integrations.flask, "
        "analytics_sdk.integrations.django, analytics_sdk.integrations.celery; "
        f"loaded = set({frameworks!r}) & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ci_runs_the_suite_on_every_supported_python() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    supported = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    noxfile = (ROOT / "noxfile.py").read_text()
    declared = re.search(r"^PYTHONS = \[(.*)\]$", noxfile, re.M)
    assert declared is not None
    assert re.findall(r'"([\d.]+)"', declared.group(1)) == supported
    assert "@nox.session(python=PYTHONS)\ndef tests(" in noxfile
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"for version in {' '.join(supported)}; do" in ci
    assert 'nox --error-on-missing-interpreters -s "${sessions[@]}"' in ci


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Return the SDK's imports between its own modules: ``(runtime, type_only)``, each
    ``{module: {imported module}}``. Runtime edges include imports inside functions (lazy
    ones); type-only edges are those under ``if TYPE_CHECKING:``."""
    import ast

    src = ROOT / "src"
    modules = {
        ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (src / "analytics_sdk").rglob("*.py")
    }
    runtime: dict[str, set[str]] = {m: set() for m in modules}
    type_only: dict[str, set[str]] = {m: set() for m in modules}

    def targets(node: ast.AST, module: str, is_package: bool) -> set[str]:
        found = set()
        if isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = node.module or ""
            if node.level:
                stem = f"{base}.{stem}" if stem else base
            found = {f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in modules}
            if len(found) < len(node.names):
                found.add(stem)  # names from the module itself
        return {name for name in found if name in modules}

    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        checking: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                checking.update(id(n) for child in node.body for n in ast.walk(child))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges = type_only if id(node) in checking else runtime
                edges[module] |= targets(node, module, path.name == "__init__.py") - {module}
    return runtime, type_only


def test_imports_point_down_from_api_to_client_to_prometheus_and_feature() -> None:
    runtime, type_only = import_graph()
    sdk = "analytics_sdk"
    # The layers: api over client; client over feature and prometheus. No import goes up,
    # not even a lazy one inside a function.
    assert f"{sdk}.api" not in runtime[f"{sdk}.prometheus"] | type_only[f"{sdk}.prometheus"]
    for upper in ("api", "client"):
        assert f"{sdk}.{upper}" not in runtime[f"{sdk}.feature"] | type_only[f"{sdk}.feature"]
    # No circle through these modules at run time (type-only imports do not run).
    focus = {f"{sdk}.{m}" for m in ("api", "client", "feature", "prometheus", "process")}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in runtime[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    circles = sorted(m for m in focus if reaches(m, m))
    assert circles == [], f"import circle through {circles}"


def guarantee_references() -> list[tuple[str, str]]:
    """Every ``tests/<file>.py::<test>`` and ``benchmarks/<file>.py`` the guarantees page names."""
    text = (ROOT / "docs" / "guarantees.md").read_text()
    return re.findall(r"`((?:tests|benchmarks)/[\w/]+\.py)(?:::([\w:]+))?`", text)


def test_every_test_the_guarantees_page_names_exists() -> None:
    import ast

    references = guarantee_references()
    assert len(references) > 50  # the pattern still finds the page's references
    missing = []
    for path, name in references:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
            continue
        if not name:
            continue
        defined = {
            node.name
            for node in ast.walk(ast.parse(file.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        missing += [f"{path}::{name}" for part in name.split("::") if part not in defined]
    assert missing == []


def test_the_guarantees_page_has_no_placeholder_for_a_test() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    assert re.findall(r"\(test: added with[^)]*\)", text) == []
    assert "added with" not in text
