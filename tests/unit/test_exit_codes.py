"""One exit-code table (``bigops.exitcodes``): every error's code is a row of it, ``main()`` turns each into one
line and that code, and the README prints the table as it is."""

import re
from pathlib import Path

import pytest

from bigops import errors, exitcodes
from bigops.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_readme_prints_the_table():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- exit-codes -->\n(.*?)\n<!-- /exit-codes -->", readme, re.S)
    assert block, "README.md lost its <!-- exit-codes --> block"
    assert block.group(1) == exitcodes.markdown_table(), "regenerate it: python -m bigops.exitcodes"


def test_table_has_one_row_per_code_and_a_constant_per_row():
    codes = [row.code for row in exitcodes.TABLE]
    assert len(set(codes)) == len(codes) and codes == sorted(codes)
    for row in exitcodes.TABLE:
        assert getattr(exitcodes, row.name) == row.code
    assert exitcodes.RUN_IN_USE == 5


def test_every_error_class_has_a_code_from_the_table():
    import importlib
    for module in ("bigops.checkpoint.surgery", "bigops.notify.secrets", "bigops.watchdog.approvals"):
        importlib.import_module(module)  # load the modules that define or use errors
    table = {row.code for row in exitcodes.TABLE}
    fixed = [cls for cls in _subclasses(errors.BigopsError) if cls is not errors.TrainingEnded]
    assert {cls.__name__ for cls in fixed} >= {"CheckpointError", "OutputExistsError", "RunInUseError",
                                               "SecretError", "DecisionError"}
    for cls in [errors.BigopsError, *fixed]:
        assert cls.exit_code in table, cls
    assert set(errors.LOWER_LAYER_ERRORS.values()) <= table


@pytest.mark.parametrize("exc,code", [
    (errors.RunInUseError("the run is training"), 5),
    (errors.OutputExistsError("exists"), 4),
    (errors.CheckpointError("damaged"), 3),
    (errors.ConfigError("bad option"), 2),
    (errors.TrainingEnded("stopped", 12), 12),
    (OSError("disk full"), 1),
])
def test_main_turns_each_known_error_into_one_line_and_its_code(exc, code, monkeypatch, capsys):
    from bigops.cli import main as main_mod

    def boom(*args, **kwargs):
        raise exc
    monkeypatch.setattr(main_mod, "app", boom)
    assert main(["status", "x"]) == code == errors.exit_code_of(exc)
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"


def test_a_rank_exits_at_once_with_its_code_after_the_exit_handlers():
    """trainer.train.exit_now: the code reaches the launcher, the exit handlers and buffered output still run
    (only the interpreter's teardown of torch and DeepSpeed is skipped)."""
    import os
    import subprocess
    import sys
    script = ("import atexit, sys, trainer.train as t; atexit.register(lambda: print('handlers ran')); "
              "sys.stdout.write('buffered '); t.exit_now(11)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert proc.returncode == 11 and proc.stdout == "buffered handlers ran\n", (proc.stdout, proc.stderr)
