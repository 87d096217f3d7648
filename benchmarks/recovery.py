"""Recovery (MTTR): a rank SIGKILLed at step ~30 of the tiny run (TP 2 x PP 2, 4 ranks), time from the
kill to the first training step after recovery, and steps lost — ``bigops launch --watch`` vs torchrun's
own ``--max-restarts 1`` on the same run, in one invocation. ``python -m benchmarks.recovery``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher.local import free_port, rank_env
from trainer import config as config_mod
from trainer.rundir import RunDir, read_jsonl

SETS = ["data.source=synthetic", "model.vocab_size=512", "train.seq_length=32", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.save_interval=10", "train.train_steps=2000", "train.eval_interval=0"]


def _pids(run: Path) -> dict[int, int]:
    return {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["pid"]
            for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")}


def _kill_leftover_ranks(run: Path) -> None:
    """torchrun starts each worker in its own session: killing the launcher's group leaves them running."""
    needle = str(run).encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"trainer.train" in cmdline and needle in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _measure(run: Path, proc: subprocess.Popen, kill_at: int = 30) -> dict:
    metrics = run / "telemetry" / "metrics.jsonl"
    while not read_jsonl(metrics) or read_jsonl(metrics)[-1]["step"] < kill_at:
        time.sleep(0.02)
    before = read_jsonl(metrics)
    last_step = before[-1]["step"]
    killed = time.time()
    os.kill(_pids(run)[2], signal.SIGKILL)
    while True:
        after = read_jsonl(metrics)[len(before):]
        resumed = [r for r in after if r["time"] > killed and r["step"] <= last_step + 1]
        if resumed and len(after) > 2:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended without recovering (rc {proc.returncode})")
        time.sleep(0.02)
    first = resumed[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_leftover_ranks(run)
    return {"mttr_s": first["time"] - first["step_seconds"] - killed, "steps_lost": last_step - (first["step"] - 1)}


def run() -> dict:
    results = {}
    base = Path(tempfile.mkdtemp(prefix="bigops-recovery-"))
    # bigops: the watchdog supervises the ranks.
    run_dir = base / "bigops"
    cmd = [sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run_dir), "--watch",
           "--set", "watchdog.interval_s=0.5", *[a for s in SETS for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results["bigops"] = _measure(run_dir, proc)
    # torchrun --max-restarts 1: the elastic agent restarts every worker; they resume from `latest`.
    run_dir = base / "torchrun"
    run_dir.mkdir()
    cfg = config_mod.validate(config_mod.resolve("tiny", overrides=SETS), world_size=4)
    cfg = config_mod.resolve_precision(cfg, False)
    (run_dir / "run.toml").write_text(config_mod.dumps_toml(cfg))
    # torchrun's documented elastic set-up (the c10d rendezvous; the static one does not survive a restart).
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", "--max-restarts=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "trainer.train",
               "--run-dir", str(run_dir)]
    log = open(run_dir / "torchrun.log", "wb")
    proc = subprocess.Popen(command, env=rank_env(4), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        results["torchrun"] = _measure(run_dir, proc)
        results["ratio_mttr_bigops_vs_torchrun"] = results["bigops"]["mttr_s"] / results["torchrun"]["mttr_s"]
    except RuntimeError as exc:
        exit_record = RunDir(run_dir).exit_record
        reason = json.loads(exit_record.read_text())["message"][:160] if exit_record.exists() else str(exc)
        results["torchrun"] = {"mttr_s": None, "steps_lost": None, "failed": f"{exc}: {reason}"}
        results["ratio_mttr_bigops_vs_torchrun"] = None
    return {"benchmark": "recovery", **results}


def main(argv=None) -> dict:
    r = run()
    print("recovery from a SIGKILLed rank (tiny, TP 2 x PP 2, checkpoint every 10 steps):")
    for name in ("bigops", "torchrun"):
        if r[name].get("failed"):
            print(f"  {name:<9} did not recover: {r[name]['failed']}")
        else:
            print(f"  {name:<9} kill -> first resumed step {r[name]['mttr_s']:.1f} s, steps lost {r[name]['steps_lost']}")
    if r["ratio_mttr_bigops_vs_torchrun"] is not None:
        print(f"  ratio bigops / torchrun: {r['ratio_mttr_bigops_vs_torchrun']:.2f}")
    return r


if __name__ == "__main__":
    main()
