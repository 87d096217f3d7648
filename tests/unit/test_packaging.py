"""What the wheel declares: every third-party module the code imports comes from a declared dependency (an
optional extra only where the import is guarded with a one-line error), and every non-Python file the code
opens beside itself is package data. The wheel itself is built and installed in tests/distributed/test_wheel.py."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bigops", "trainer", "launcher")


def _normalized(requirement: str) -> str:
    """``"Tomli-W>=1.0"`` -> ``"tomli-w"`` (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]).lower()


def _imported_top_level_modules() -> dict[str, set[str]]:
    """Top-level module -> the files that import it (absolute imports anywhere in the three packages)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: files for m, files in found.items() if m not in sys.stdlib_module_names and m not in PACKAGES}


def test_every_runtime_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_normalized(r) for r in project["dependencies"]}
    extras = {_normalized(r) for r in project["optional-dependencies"]["dashboards"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in _third_party(_imported_top_level_modules()).items():
        owners = {_normalized(d) for d in distributions.get(module, [module])}
        if owners & required:
            continue
        if owners & extras and files == {"bigops/dashboards/check.py"}:
            continue  # the optional extra; its import is guarded (test below)
        if module == "nvidia_resiliency_ext" and files == {"trainer/peer_heartbeat.py"}:
            continue  # the recovery benchmark's peer, imported only when BIGOPS_NVRX_HEARTBEATS=1 asks for it
        undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_the_check_finds_an_undeclared_import():
    """The scan sees imports inside functions too (tokenizers was once used but not declared)."""
    modules = _third_party(_imported_top_level_modules())
    assert "tokenizers" in modules and "deepspeed" in modules and "paramiko" in modules


def test_the_optional_dashboards_extra_fails_with_one_line(monkeypatch):
    import pytest

    from bigops.dashboards import check
    from bigops.errors import BigopsError

    monkeypatch.setitem(sys.modules, "grafana_foundation_sdk", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "grafana_foundation_sdk.cog.encoder", None)
    with pytest.raises(BigopsError, match=r"pip install 'bigops\[dashboards\]'"):
        check.sdk_problems({})


def test_files_opened_beside_the_code_are_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for package, globs in data.items()
               for glob in globs for path in (ROOT / package.replace(".", "/")).glob(glob)}
    beside_code = {path for package in PACKAGES for path in (ROOT / package).rglob("*")
                   if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts}
    assert beside_code, "the scan should see launcher/slurm/profiles/jean-zay.toml"
    assert beside_code <= shipped, f"not shipped in the wheel: {sorted(map(str, beside_code - shipped))}"
