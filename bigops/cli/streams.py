"""stdout carries a command's result and nothing else: its lines and tables, or the one JSON document of
``--format json`` that a script hands to ``json.loads``. What libraries say goes to stderr.

DeepSpeed is the engine that does not comply: ``deepspeed.utils.logging`` gives its logger a
``StreamHandler(sys.stdout)``, bound to whatever ``sys.stdout`` is when ``deepspeed`` is first imported, and its
accelerator probe warns through it ("Setting accelerator to CPU ...") into the middle of a JSON document. The
commands import DeepSpeed late and from many places (the checkpoint readers, reshape, the layout tables), so
instead of guarding each import, :func:`library_output_on_stderr` hooks the one import they all go through,
the ``deepspeed`` package's own, and runs it with ``sys.stdout`` pointing at stderr: the handler is bound to
stderr from then on, and whatever the import prints lands there too. A DeepSpeed imported earlier in the
process (a program that calls ``main()``) has its stdout handler moved to stderr instead.

The ranks are other processes (``launcher.ranks`` starts them): their logs are untouched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import sys
from typing import Iterator

IMPORTED_ON_STDERR = ("deepspeed",)
"""Packages whose import runs with stdout on stderr (their loggers bind the stdout of that moment)."""

STDOUT_LOGGERS = ("DeepSpeed",)
"""Loggers of those packages whose handlers write to stdout (``deepspeed.utils.logging.logger``)."""


class _ExecOnStderr(importlib.abc.Loader):
    """The package's own loader, with ``exec_module`` run while ``sys.stdout`` is ``sys.stderr``; everything
    else (resource readers, ``get_source``) is the wrapped loader's."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self._loader.exec_module(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _FindOnStderr(importlib.abc.MetaPathFinder):
    """Finds :data:`IMPORTED_ON_STDERR` with the finders after it and wraps the loader they return."""

    def find_spec(self, name, path, target=None):
        if name not in IMPORTED_ON_STDERR:
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1:]:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ExecOnStderr(spec.loader)
                return spec
        return None


def _move_stdout_handlers() -> None:
    """Handlers already bound to stdout (the package was imported before ``main()``) now write to stderr."""
    for name in STDOUT_LOGGERS:
        if name not in logging.root.manager.loggerDict:
            continue
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
                handler.setStream(sys.stderr)


@contextlib.contextmanager
def library_output_on_stderr() -> Iterator[None]:
    """While a command runs: DeepSpeed's import, and its logger, write to stderr (see the module docstring).
    The import hook is removed afterwards, so a process that goes on after ``main()`` is left as it was."""
    _move_stdout_handlers()
    finder = _FindOnStderr()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
