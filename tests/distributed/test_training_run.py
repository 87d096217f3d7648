"""The training run through `bigops launch`: real ranks (TP 2 x PP 2, gloo), real checkpoints, control.

Runs use small step counts and `data.source=synthetic` where the corpus does not matter, so that each
takes seconds. The default job (stdlib text) is run once, with no arguments at all.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.distributed

FAST = ["--set", "data.source=synthetic", "--set", "model.vocab_size=512", "--set", "train.seq_length=32",
        "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=2"]


def bigops(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigops.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigops.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = read_jsonl(run / "telemetry" / "metrics.jsonl")
        if records and records[-1]["step"] >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


def losses(run: Path) -> dict[int, float]:
    """Step -> loss, the last record of each step winning (a resumed run re-records nothing it skipped)."""
    return {r["step"]: r["loss"] for r in read_jsonl(run / "telemetry" / "metrics.jsonl")}


def test_default_launch_trains_real_text_and_its_loss_goes_down(tmp_path):
    proc = bigops("launch", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "runs" / "tiny"
    assert "data: stdlib" in proc.stdout and "TP 2 x PP 2 x DP 1 = 4 ranks" in proc.stdout
    records = read_jsonl(run / "telemetry" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 101))
    first, last = sum(r["loss"] for r in records[:10]) / 10, sum(r["loss"] for r in records[-10:]) / 10
    assert last < first - 1.0, (first, last)
    assert all(r["tflops_per_gpu"] > 0 and r["consumed_samples"] == 16 * r["step"] for r in records)
    assert [r["step"] for r in records if "val_loss" in r] == [50, 100]
    assert records[-1]["val_loss"] < records[49]["val_loss"]
    assert [r["ln_desync"] for r in records if "ln_desync" in r] == [0.0] * 10  # every 10 steps, in sync
    assert RunDir(run).latest_tag() == "global_step100" and ckpt.verify(run / "checkpoints" / "global_step100") == []
    beats = [json.loads(p.read_text()) for p in sorted((run / "telemetry" / "heartbeat").glob("rank-*.json"))]
    assert [b["rank"] for b in beats] == [0, 1, 2, 3] and {b["phase"] for b in beats} == {"exit"}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run / "telemetry" / "exit.json").read_text())["code"] == exitcodes.FINISHED


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kill_switch_then_resume_reproduces_the_uninterrupted_run(precision, tmp_path):
    common = [*FAST, "--precision", precision, "--steps", 12]
    straight = tmp_path / "straight"
    assert bigops("launch", "--run-dir", straight, *common).returncode == 0

    run = tmp_path / "stopped"
    proc = start("launch", "--run-dir", run, *common)
    wait_for_step(run, 3, proc)
    (run / "control").mkdir(exist_ok=True)
    (run / "control" / "kill-switch").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.STOPPED_ON_REQUEST, out + err
    stopped_at = ckpt.step_of(RunDir(run).latest_tag())
    assert 3 <= stopped_at < 12 and max(losses(run)) == stopped_at

    again = bigops("launch", "--run-dir", run, "--steps", 12)  # the switch is still there: stops again
    assert again.returncode == exitcodes.STOPPED_ON_REQUEST and max(losses(run)) == stopped_at
    (run / "control" / "kill-switch").unlink()
    resumed = bigops("launch", "--run-dir", run, "--steps", 12)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert losses(run) == losses(straight)  # bit for bit, every step


def test_save_switch_saves_and_goes_on(tmp_path):
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, "--steps", 40)
    wait_for_step(run, 2, proc)
    (run / "control").mkdir(exist_ok=True)
    (run / "control" / "save-switch").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    tags = ckpt.complete_tags(RunDir(run))
    assert len(tags) == 2 and 2 <= ckpt.step_of(tags[0]) < 40 and tags[1] == "global_step40"
    assert not (run / "control" / "save-switch").exists()


def test_sigusr1_saves_and_exits_for_the_next_job(tmp_path):
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, "--steps", 400)
    wait_for_step(run, 2, proc)
    for beat in (run / "telemetry" / "heartbeat").glob("rank-*.json"):  # SLURM signals the ranks
        os.kill(json.loads(beat.read_text())["pid"], signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.STOPPED_BY_SIGNAL, out + err
    step = ckpt.step_of(RunDir(run).latest_tag())
    assert 2 <= step < 400 and max(losses(run)) == step


def test_exit_duration_saves_and_exits(tmp_path):
    proc = bigops("launch", "--run-dir", tmp_path / "run", *FAST, "--steps", 100000, "--exit-duration-in-mins", 0.1)
    assert proc.returncode == exitcodes.STOPPED_BY_SIGNAL, proc.stdout + proc.stderr
    step = ckpt.step_of(RunDir(tmp_path / "run").latest_tag())
    # The budget counts from the ranks' start (as Megatron's): on a loaded machine it may end before step 1,
    # and the save at step 0 is then the right outcome.
    assert 0 <= step < 100000
    assert max(losses(tmp_path / "run"), default=0) == step


def test_skip_ranges_skip_samples(tmp_path):
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "control" / "skip-ranges").write_text("0-8  # the first global batch\n20-24\n")
    proc = bigops("launch", "--run-dir", run, *FAST, "--steps", 3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["consumed_samples"] for r in read_jsonl(run / "telemetry" / "metrics.jsonl")] == [16, 28, 36]


def test_sigkill_during_a_checkpoint_write_leaves_latest_complete(tmp_path):
    run = tmp_path / "run"
    args = ["launch", "--run-dir", run, *FAST, "--set", "model.hidden_size=256", "--set", "model.num_layers=6",
            "--save-interval", 1, "--steps", 200]
    proc = start(*args)
    caught = None
    deadline = time.time() + 180
    while caught is None and time.time() < deadline and proc.poll() is None:
        partial = list((run / "checkpoints").glob(".partial-*")) if (run / "checkpoints").exists() else []
        if partial and RunDir(run).latest_tag():
            beats = [json.loads(p.read_text()) for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")]
            for beat in beats:
                os.kill(beat["pid"], signal.SIGKILL)
            caught = partial[0].name
        time.sleep(0.001)
    proc.communicate(timeout=60)
    assert caught, "no checkpoint write was caught in progress"
    latest = RunDir(run).latest_tag()
    assert ckpt.verify(run / "checkpoints" / latest) == []  # the previous, complete checkpoint
    assert ckpt.step_of(latest) < ckpt.step_of(caught.removeprefix(".partial-"))
    resumed = bigops("launch", "--run-dir", run, "--steps", ckpt.step_of(latest) + 2)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {latest}" in resumed.stdout


def test_nonfinite_steps_are_skipped_then_the_run_exits_for_a_rollback(tmp_path):
    run = tmp_path / "run"
    # An absurd learning rate without clipping: step 1 blows the weights up, later losses are NaN/Inf.
    proc = bigops("launch", "--run-dir", run, *FAST, "--steps", 50, "--save-interval", 1, "--set", "train.lr=1e30",
                  "--set", "train.min_lr=1e30", "--set", "train.warmup_steps=0", "--set", "train.clip_grad=0",
                  "--set", "train.max_skipped_steps_in_a_row=3")
    assert proc.returncode == exitcodes.NONFINITE_LIMIT, proc.stdout + proc.stderr
    records = read_jsonl(run / "telemetry" / "metrics.jsonl")
    assert [r["skipped"] for r in records[-3:]] == [True] * 3 and not records[0]["skipped"]
    assert len(records) < 50
    saved = ckpt.step_of(RunDir(run).latest_tag())
    assert all(not r["skipped"] for r in records[:saved])  # nothing saved after a skipped step
    assert saved == len(records) - 3
    watch = bigops("watch", run, "--once", "--format", "json")  # the watchdog sees it from the records
    found = [json.loads(line) for line in watch.stdout.splitlines()]
    assert watch.returncode == 0 and any(f["kind"].startswith("NonFinite") and f["severity"] == "critical"
                                         for f in found), watch.stdout + watch.stderr


def _one_line_error(proc, code, text):
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert text in proc.stderr and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_bad_input_is_one_line(tmp_path):
    _one_line_error(bigops("launch", "--run-dir", tmp_path / "missing", "--resume"), 2, "has no checkpoint to resume")
    _one_line_error(bigops("launch", "--run-dir", tmp_path / "d", "--set", "data.source=/no/such/corpus"), 2,
                    "data.source='/no/such/corpus' does not exist")

    run = tmp_path / "run"
    assert bigops("launch", "--run-dir", run, *FAST, "--steps", 2).returncode == 0
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe garbage")
    _one_line_error(bigops("launch", "--run-dir", run, "--steps", 4), exitcodes.CHECKPOINT_ERROR, "latest is corrupt")
    (run / "checkpoints" / "latest").write_text("global_step2\n")

    # A run.toml edited by hand to another layout: the trainer refuses the checkpoint.
    toml = (run / "run.toml").read_text().replace("tp = 2", "tp = 1").replace("dp = 1", "dp = 2")
    (run / "run.toml").write_text(toml)
    _one_line_error(bigops("launch", "--run-dir", run, "--steps", 4, "--set", "parallel.tp=1",
                           "--set", "parallel.dp=2"),
                    exitcodes.CHECKPOINT_ERROR, "was written at TP 2 x PP 2 x DP 1, this run is TP 1 x PP 2 x DP 2")
