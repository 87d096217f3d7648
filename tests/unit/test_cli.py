"""The CLI as a script and a person meet it: it starts without the engines (no torch, DeepSpeed, transformers
until a command needs them), ``--format json`` puts one JSON document and nothing else on stdout (DeepSpeed's
accelerator warning goes to stderr), help shows ``[model]`` and ``[user@]`` literally, completion installs,
generated files are not overwritten without ``--force``, and ``launch`` takes RUN like every other command.

The stdout checks run the CLI as a subprocess, without the suite's ``DS_ACCELERATOR=cpu`` (which silences the
warning), as a user runs it on a machine without a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from bigops import exitcodes
from bigops.cli.launch import run_dir_of
from bigops.cli.main import app, main
from tests.distributed import megatron_writer as mw
from tests.unit.test_watch import bloom_13b_records, write_run

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("torch", "deepspeed", "transformers")


def bigops(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m bigops.cli.main ARGS`` as a user runs it: DeepSpeed left to detect its accelerator."""
    base = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    return subprocess.run([sys.executable, "-m", "bigops.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


# ----------------------------------------------------------------------------------------- start-up: no engines
@pytest.mark.parametrize("argv", [None, ["--help"], ["ckpt", "--help"], ["ckpt", "export-hf", "--help"],
                                  ["launch", "--help"], ["surgery", "--help"], ["data", "prepare", "--help"],
                                  ["plot", "--help"]])
def test_the_cli_and_its_help_load_no_engine(argv):
    code = "import sys\nimport bigops.cli.main as m\n"
    if argv is not None:
        code += f"m.main({argv!r})\n"
    code += f"print(sorted(k for k in {ENGINES!r} if k in sys.modules), file=sys.stderr)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    if argv is not None:
        assert "Usage: bigops" in done.stdout


# -------------------------------------------------------------------------------------- --format json: stdout
@pytest.fixture(scope="module")
def megatron_run(tmp_path_factory):
    """A run whose checkpoint is DeepSpeed's layout (loading it imports DeepSpeed), with a spiky history."""
    run = tmp_path_factory.mktemp("cli") / "run"
    mw.write_checkpoint(run / "checkpoints", mw.reference_model(mw.Shape()), mw.Shape())
    write_run(run, bloom_13b_records())
    return run


JSON_COMMANDS = {
    "ckpt list": ["ckpt", "list"],
    "ckpt inspect": ["ckpt", "inspect"],
    "ckpt verify": ["ckpt", "verify"],
    "ckpt compare-tp": ["ckpt", "compare-tp"],
    "status": ["status"],
}
"""Every --format json command that reads a run (``chain status`` needs SLURM: tests/integration/test_ssh.py
parses its stdout)."""


@pytest.mark.parametrize("name", sorted(JSON_COMMANDS))
def test_format_json_is_one_document_on_stdout(megatron_run, name):
    command = JSON_COMMANDS[name]
    done = bigops(*command, megatron_run, "--format", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # nothing else on stdout
    assert isinstance(document, dict) and document


def test_deepspeeds_warning_goes_to_stderr(megatron_run):
    done = bigops("ckpt", "compare-tp", megatron_run, "--format", "json")
    assert json.loads(done.stdout)["tp"] == 2
    assert "Setting accelerator to CPU" in done.stderr  # said, where a person sees it
    progress = [line for line in done.stderr.splitlines() if line.startswith("comparing: TP copies")]
    assert progress and " read" in progress[-1]  # plain lines off a terminal, on stderr
    done_files, total = progress[-1].split()[3].split("/")
    assert done_files == total and int(total) > 0


def test_watch_json_is_one_object_per_line(megatron_run, tmp_path):
    run = tmp_path / "watched"
    write_run(run, bloom_13b_records())
    done = bigops("watch", run, "--once", "--format", "json")
    assert done.returncode == 0, done.stderr
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    assert "LossSpike" in {f["kind"] for f in findings}


def test_export_hf_prints_its_one_line(megatron_run, tmp_path):
    done = bigops("ckpt", "export-hf", megatron_run, tmp_path / "hf", "--dtype", "fp32")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and done.stdout.startswith("exported global_step1000")


# ------------------------------------------------------------------------------------------------- help text
def _commands(command, path):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


LITERAL = re.compile(r"\\?\[[a-z#/@][^\[\]\s]*\]")
"""What Rich would read as a style tag (and drop), escaped or not."""


def test_every_bracket_in_the_help_is_shown(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside a token
    checked = 0
    for path, command in _commands(typer.main.get_command(app), []):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        wanted = {token.lstrip("\\") for text in texts for token in LITERAL.findall(text)}
        if not wanted:
            continue
        assert main([*path, "--help"]) == 0
        shown = capsys.readouterr().out
        assert {w for w in wanted if w not in shown} == set(), " ".join(path)
        checked += 1
    assert checked >= 2  # launch (--config, --profile, --host) and the chain commands (--host)


def test_the_config_and_profile_help_name_their_tables(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["launch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "([model], [parallel], [train])" in out and "a [slurm] table" in out and "[user@]host[:port]" in out


# ------------------------------------------------------------------------------------------------ completion
def test_completion_completes_commands_options_and_choices():
    def complete(words: str) -> list[str]:
        done = bigops(env={"_BIGOPS_COMPLETE": "complete_bash", "COMP_WORDS": words,
                           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))})
        assert done.returncode == 0, done.stderr
        return done.stdout.split()
    assert complete("bigops ck") == ["ckpt"]
    assert complete("bigops ckpt ex") == ["export-hf"]
    assert complete("bigops ckpt list --format ") == ["text", "json"]


def test_completion_installs_for_bash(tmp_path):
    # the shell named on the command line (Typer's switch for it), not detected from this test's parent processes
    done = bigops("--install-completion", "bash", env={"HOME": str(tmp_path), "SHELL": "/bin/bash",
                                                       "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert done.returncode == 0, done.stderr
    script = next((tmp_path / ".bash_completions").glob("bigops*"))
    assert "_BIGOPS_COMPLETE=complete_bash" in script.read_text()
    assert str(script.name) in (tmp_path / ".bashrc").read_text()


# ---------------------------------------------------------------------------------------- --force, generated
def test_dashboards_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "boards"
    assert main(["dashboards", "export", str(out)]) == 0
    board = out / "run-overview.json"
    board.write_text("{}  # edited by hand\n")
    capsys.readouterr()
    assert main(["dashboards", "export", str(out)]) == exitcodes.OUTPUT_EXISTS
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err and str(board) in err
    assert board.read_text() == "{}  # edited by hand\n"  # nothing written
    assert main(["dashboards", "export", str(out), "--force"]) == 0
    assert json.loads(board.read_text())["title"]
    assert oct(board.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # Grafana may read it


def test_dashboards_export_all_refuses_when_any_file_exists(tmp_path, capsys):
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "README.md").write_text("mine\n")
    assert main(["dashboards", "export", str(tmp_path), "--all"]) == exitcodes.OUTPUT_EXISTS
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "dashboards").exists() and (tmp_path / "runbooks" / "README.md").read_text() == "mine\n"
    assert main(["dashboards", "export", str(tmp_path), "--all", "--force"]) == 0
    assert (tmp_path / "dashboards" / "prometheus" / "rules.yml").exists()


def test_alerts_render_refuses_to_overwrite_the_rules_or_their_tests(tmp_path, capsys):
    rules, tests = tmp_path / "rules.yml", tmp_path / "rules.test.yml"
    tests.write_text("kept\n")
    assert main(["alerts", "render", str(rules), "--tests", str(tests)]) == exitcodes.OUTPUT_EXISTS
    err = capsys.readouterr().err
    assert "--force" in err and str(tests) in err
    assert not rules.exists() and tests.read_text() == "kept\n"  # neither file written
    assert main(["alerts", "render", str(rules), "--tests", str(tests), "--force"]) == 0
    assert "LossSpike" in rules.read_text() and "rule_files" in tests.read_text()
    assert main(["alerts", "render", str(rules)]) == exitcodes.OUTPUT_EXISTS


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ launch takes RUN
def test_launch_takes_run_or_run_dir_and_refuses_two_different_ones(tmp_path, capsys):
    assert run_dir_of(tmp_path / "a", None) == tmp_path / "a"
    assert run_dir_of(None, tmp_path / "a") == tmp_path / "a"
    assert run_dir_of(tmp_path / "a", Path(f"{tmp_path}/./a/")) == tmp_path / "a"
    assert run_dir_of(None, None) == Path("runs/tiny")
    # Through the CLI: a bad option is reported for either spelling, before anything is created.
    for argv in ([str(tmp_path / "a")], ["--run-dir", str(tmp_path / "a")]):
        assert main(["launch", *argv, "--tp", "3"]) == exitcodes.USAGE
        assert "parallel.tp=3" in capsys.readouterr().err
    assert main(["launch", str(tmp_path / "a"), "--run-dir", str(tmp_path / "b")]) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert "name different run directories" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_launch_in_a_pipe_prints_plain_step_lines_with_an_eta(tmp_path, monkeypatch):
    """Off a terminal (a pipe, a CI log) training progress is plain lines, never a bar's escapes."""
    import io

    from rich.console import Console

    from bigops.cli import launch as launch_cli
    from trainer import config as config_mod
    from trainer.rundir import RunDir, append_jsonl

    out = io.StringIO()
    monkeypatch.setattr(launch_cli, "console", Console(file=out, force_terminal=False, width=200))
    run = RunDir(tmp_path / "run")
    run.metrics.parent.mkdir(parents=True)
    cfg = config_mod.preset("tiny")
    cfg.train.train_steps = 10

    class Ranks:  # the ranks write a step per poll, then exit
        def __init__(self):
            self.step = 0

        def poll(self):
            if self.step == 4:
                return 0
            self.step += 1
            append_jsonl(run.metrics, {"step": self.step, "loss": 7.0 - self.step / 10, "tokens_per_second": 3000.0,
                                       "step_seconds": 2.0})
            return None

    launch_cli._follow(run, cfg, Ranks(), done_before=0, poll_s=0)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.strip().splitlines()[-1] == "train: step 4/10 loss 6.6000 3,000 tok/s ETA 12s"
    assert launch_cli.step_line([{"step": 1, "loss": 1.0, "tokens_per_second": 1.0, "step_seconds": 30.0}], 101) \
        == "step 1/101 loss 1.0000 1 tok/s ETA 50m00s"
