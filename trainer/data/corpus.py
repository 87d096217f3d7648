"""Real text that exists offline on every machine: the Python standard library, prose plus code.

Like BLOOM's mix of natural language and code: the docstrings of every stdlib module (English prose with
doctest examples), then stdlib source files, up to a byte budget. Files are parsed with ``ast``, never
imported. Users can point at their own files or folders instead.
"""

from __future__ import annotations

import ast
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


def file_documents(paths: list[str | Path], max_bytes: int) -> Iterator[str]:
    """One document per text file under ``paths`` (files or folders, recursively, sorted), within budget."""
    used = 0
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"data path {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                      if p.is_file() and p.suffix in TEXT_SUFFIXES)
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip() and used + len(text) <= max_bytes:
                used += len(text)
                yield text
