"""Real text that exists offline on every machine: the Python standard library, prose plus code.

Like BLOOM's mix of natural language and code: the docstrings of every stdlib module (English prose with
doctest examples), then stdlib source files, up to a byte budget. Files are parsed with ``ast``, never
imported. Users can point at their own files, folders or jsonl instead (read whole, streamed).
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".html", ".tex", ".c", ".h", ".cpp", ".js")
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__", "ensurepip",
              "dist-packages", "config-3.11-x86_64-linux-gnu"}


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-"))
        found += [Path(folder) / f for f in sorted(files) if f.endswith(".py")]
    return found


def _docstrings(source: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(doc)
    return "\n\n".join(parts)


def stdlib_documents(max_bytes: int) -> Iterator[str]:
    """Docstrings of each stdlib module (one document per module), then module sources, within budget."""
    files = _stdlib_files()
    used = 0
    sources = []
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        sources.append(source)
        doc = _docstrings(source)
        if doc and used + len(doc) <= max_bytes:
            used += len(doc)
            yield doc
    for source in sources:
        if used + len(source) > max_bytes:
            continue
        used += len(source)
        yield source


def file_documents(paths: list[str | Path], json_key: str = "text") -> Iterator[str]:
    """One document per text file under ``paths`` (files or folders, recursively, sorted), or per line of a
    ``.jsonl`` file (its ``json_key`` field, as Megatron's ``preprocess_data.py --json-keys``). A user's data is
    read whole: there is no size cap here. A ``.jsonl`` line that is not a JSON object with a string
    ``json_key`` raises ``CorpusError`` naming the file and line."""
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"data path {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                      if p.is_file() and p.suffix in TEXT_SUFFIXES)
        for path in files:
            if path.suffix == ".jsonl":
                yield from jsonl_documents(path, json_key)
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                yield text


class CorpusError(ValueError):
    """A corpus file that cannot be read as documents; one line naming the file (and line)."""


def jsonl_documents(path: Path, json_key: str) -> Iterator[str]:
    """The ``json_key`` field of every line of ``path`` (blank lines skipped), streamed."""
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise CorpusError(f"{path}:{number}: not JSON ({exc})") from None
            text = record.get(json_key) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{number}: no string field {json_key!r} (set data.json_key)")
            if text.strip():
                yield text
