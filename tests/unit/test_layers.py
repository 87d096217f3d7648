"""The import layers and the run-directory contract, checked on the source (no import of the modules).

- ``trainer`` imports nothing from ``bigops`` or ``launcher`` (it runs on the ranks, under torchrun);
- ``bigops.checkpoint`` imports nothing from ``bigops.watchdog`` (the watchdog sits above the checkpoint
  tools it drives, never below);
- no module outside ``trainer/rundir/`` spells a run-directory path: every one is a ``RunDir`` property or
  a name of ``trainer.rundir.paths`` (a path joined from a literal, or a literal that is a run-directory
  file name or a path through one, is a second spelling). Docstrings and comments may name files freely.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from trainer.rundir import paths

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "trainer" / "rundir"

NAMES = {value for name, value in vars(paths).items()
         if name.isupper() and isinstance(value, str) and value} - {paths.HEARTBEAT_GLOB}
"""Every file and folder name of the contract."""
FILE_NAMES = {n for n in NAMES if "." in n or "-" in n} - {paths.SYNC_LAYERNORM}
"""Names that are a run-directory file whatever the context (``sync-layernorm`` is also the action's name,
and a folder name such as ``gpu`` or ``data`` is also a label or a key: those count only inside a path)."""
_FILES = "|".join(re.escape(n) for n in sorted(FILE_NAMES | {paths.SYNC_LAYERNORM}, key=len, reverse=True))
_ANY = "|".join(re.escape(n) for n in sorted(NAMES, key=len, reverse=True))
IN_PATH = re.compile(rf"/(?:{_FILES})(?![\w.-])|(?:^|/)(?:{_ANY})/(?:(?:{_ANY})(?![\w.-])|$|\*|<|\{{)")
"""A path through the run directory: ``.../events.jsonl``, ``telemetry/heartbeat``, ``RUN/control/``."""

ALLOWED: dict[str, dict[str, str]] = {
    "bigops/dashboards/runbooks.py": {"": "the runbooks are documentation for people (rendered to runbooks/*.md): "
                                          "they name RUN/... files in shell lines, as the README does"},
    "bigops/cli/chain.py": {"'slurm'": "the repository's launcher/slurm/profiles folder, not a run's slurm/"},
}
"""Module (relative path) -> {a fragment of the hits it may have ("": all of them): why}."""


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _offending(modules: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(REPO)}: {name}" for p in modules for name in sorted(_imports(p))
            if name.split(".")[0] in banned or name.startswith(banned)]


def test_trainer_imports_nothing_from_bigops_or_launcher():
    assert _offending(_modules("trainer"), ("bigops", "launcher")) == []


def test_checkpoint_tools_import_nothing_from_the_watchdog():
    assert [line for line in _offending(_modules("bigops/checkpoint"), ("bigops.watchdog",))] == []


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for i, stmt in enumerate(body):  # a string statement: a docstring or an attribute's docstring
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                        and isinstance(stmt.value.value, str):
                    out.add(id(stmt.value))
    return out


def _path_spellings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            skip.add(id(right))
            text = right.value if isinstance(right, ast.Constant) and isinstance(right.value, str) else None
            if text is None and isinstance(right, ast.JoinedStr):
                text = "".join(v.value for v in right.values if isinstance(v, ast.Constant))
            if text is not None and (text in NAMES or IN_PATH.search(text) or text.startswith("rank-")):
                found.append(f"line {node.lineno}: ... / {text!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value in FILE_NAMES or IN_PATH.search(node.value):
                found.append(f"line {node.lineno}: {node.value!r}")
    allowed = ALLOWED.get(str(path.relative_to(REPO)), set())
    return [f for f in found if not any(a in f for a in allowed)]


def test_only_the_contract_spells_a_run_directory_path():
    spelled = {str(p.relative_to(REPO)): hits for p in _modules("trainer", "bigops", "launcher")
               if CONTRACT not in p.parents and (hits := _path_spellings(p))}
    assert spelled == {}, "use trainer.rundir (RunDir's properties, paths' names) instead:\n" + "\n".join(
        f"{module}: {hit}" for module, hits in spelled.items() for hit in hits)


def test_the_checker_sees_a_second_spelling(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""A docstring may say events.jsonl and RUN/control/kill-switch."""\n'
                     'a = run.root / "events.jsonl"\nb = f"{run_dir}/slurm/chain.json"\nc = "kill-switch"\n'
                     'd = run.telemetry / "heartbeat" / f"rank-{r:05d}.json"\ne = {"gpu": 3}\n')
    hits = _path_spellings_of(probe)
    assert [h.split(":")[0] for h in hits].count("line 2") == 1 and any("chain.json" in h for h in hits)
    assert any("kill-switch" in h for h in hits) and any("rank-" in h for h in hits)
    assert not any("line 1" == h.split(":")[0] or "line 6" == h.split(":")[0] for h in hits)


def _path_spellings_of(path: Path) -> list[str]:
    """:func:`_path_spellings` for a file outside the repository (the checker's own test)."""
    global REPO
    saved, REPO = REPO, path.parent
    try:
        return _path_spellings(path)
    finally:
        REPO = saved
