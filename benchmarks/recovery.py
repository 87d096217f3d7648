"""Recovery (MTTR) side by side: the same DeepSpeed run (TP 2 x PP 2, 4 gloo ranks) under ``bigops launch
--watch``, torchrun ``--max-restarts 1`` and NVIDIA's ``ft_launcher`` (nvidia-resiliency-ext 0.4.1, installed by
the benchmark into a cache folder, see ``benchmarks.peers``), the same fault injected into rank 2, in one
invocation. ``python -m benchmarks.recovery [--sizes tiny medium] [--faults kill hang] [--peers ...]``.

- ``kill``: SIGKILL of rank 2 a step or more after a checkpoint (bigops: once its supervisor reports its warm
  spares ready, ``watchdog/spares.json``, as in any run past its first minutes): kill -> first resumed step (s),
  steps lost, and the restart overhead beyond the checkpoint load (MTTR minus the load time rank 0 logs).
- ``hang``: SIGSTOP of rank 2: -> the peer found it (bigops: its TrainingHang event; every peer: the stopped
  rank killed) and -> first resumed step. Both hang detectors get the same timeout (``--hang-timeout``) and
  check interval; NVRx sees the ranks only through the heartbeats they send it (``trainer.peer_heartbeat``).
- Sizes: ``tiny`` (the default run, an 18 MB checkpoint), ``medium`` (hidden 768 x 8 layers, ~0.9 GB) and
  ``bloom-560m`` (its real shape and vocabulary, 8.9 GB of fp32 weights + Adam; hours on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from benchmarks import peers
from benchmarks.cli import main_of
from benchmarks.recovery_figures import nvrx_worker_failed, ratio, reported, resumption
from trainer.rundir import RunDir, read_jsonl

BASE = ["data.source=synthetic", "model.vocab_size=512", "train.seq_length=32", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.train_steps=2000", "train.eval_interval=0"]
# Extra settings, checkpoint interval, and the step after which the fault is injected: never a save's step, as a
# rank stopped while saving is given bigops' checkpoint timeout (watchdog.hang_checkpoint_timeout_s, 30 min).
SIZES = {
    "tiny": ([], 10, 33),
    "medium": (["model.hidden_size=768", "model.num_layers=8", "model.num_attention_heads=12"], 4, 9),
    "bloom-560m": (["model.hidden_size=1024", "model.num_layers=24", "model.num_attention_heads=16",
                    "model.vocab_size=250880"], 2, 5),
}
SETS = BASE + ["train.save_interval=10"]  # the tiny run (kept for callers of the older module)


def _sets(size: str) -> list[str]:
    extra, interval, _ = SIZES[size]
    return BASE + extra + [f"train.save_interval={interval}"]


def _rank_pid(run: RunDir, rank: int = 2) -> int:
    return json.loads(run.heartbeat(rank).read_text())["pid"]


def _past(run: RunDir, step: int, proc, timeout_s: float) -> list[dict]:
    """Wait for step ``step`` in metrics.jsonl (the run's output if it exits first); its records."""
    if not peers.wait_until(lambda: proc.poll() is not None or (read_jsonl(run.metrics) or [{"step": -1}])[-1]["step"]
                            >= step, timeout_s):
        raise RuntimeError(f"no step {step} within {timeout_s:.0f} s")
    if proc.poll() is not None:
        raise RuntimeError(f"the run exited (rc {proc.returncode}) before step {step}")
    return read_jsonl(run.metrics)


def _spares_warm(run: RunDir, proc, timeout_s: float) -> str:
    """Wait until the supervisor reports all its spares warm (``watchdog/spares.json``); "W/N" as reached."""
    def state() -> dict:
        try:
            return json.loads(run.spares.read_text())
        except (OSError, ValueError):
            return {}
    peers.wait_until(lambda: proc.poll() is not None or (state().get("wanted") or 0) > 0
                     and state().get("warm") == state().get("wanted"), timeout_s, poll_s=0.2)
    s = state()
    return f"{s.get('warm', 0)}/{s.get('wanted', 0)}"


def _resumed(run: RunDir, fault_time: float, proc, timeout_s: float) -> dict | None:
    """The resumption figures once a step follows a load after the fault (None: the run ended or timed out)."""
    found: list[dict] = []

    def check() -> bool:
        figures = resumption(read_jsonl(run.metrics), read_jsonl(run.checkpoint_log), fault_time)
        if figures is not None:
            found.append(figures)
        return bool(found) or proc.poll() is not None

    peers.wait_until(check, timeout_s)
    return found[0] if found else None


def _failure(run: RunDir, proc) -> str:
    """Why a run did not recover: the exit record's message, else the launcher's exit code."""
    exit_record = run.exit_record
    if exit_record.exists():
        return json.loads(exit_record.read_text()).get("message", "")[:200]
    return f"launcher rc {proc.returncode}" if proc.poll() is not None else "still running, no step resumed"


def _detected(peer: str, fault: str, run_dir: Path, fault_time: float) -> float | None:
    """Fault -> the peer's own record of it: bigops' RankCrash / TrainingHang event, ft_launcher's log line of the
    failed worker (for a hang, that is its kill of the stopped rank); None for torchrun (not parsed)."""
    if peer == "bigops":
        at = reported(read_jsonl(RunDir(run_dir).events), "RankCrash" if fault == "kill" else "TrainingHang",
                      fault_time)
    elif peer == "nvrx":
        log = run_dir.parent / f"{run_dir.name}.log"
        at = nvrx_worker_failed(log.read_text(errors="replace"), fault_time) if log.exists() else None
    else:
        at = None
    return at - fault_time if at else None


def measure(peer: str, size: str, fault: str, base: Path, hang_timeout_s: float, recover_within_s: float) -> dict:
    """One peer, one size, one fault: the figures (or ``failed``: why it did not recover)."""
    _, _, fault_after = SIZES[size]
    run_dir = base / f"{peer}-{size}-{fault}"
    run = RunDir(run_dir)
    proc = peers.start(peer, run_dir, _sets(size), hang_timeout_s)
    try:
        _past(run, fault_after, proc, timeout_s=peers.STARTUP_TIMEOUT_S + 60 * fault_after)
        result: dict = {}
        if peer == "bigops":  # a run in its steady state: the supervisor's spares have had time to warm
            waited = time.time()
            result["spares_warm"] = _spares_warm(run, proc, timeout_s=900)
            result["spares_wait_s"] = time.time() - waited
            _, interval, _ = SIZES[size]
            now = (read_jsonl(run.metrics) or [{"step": fault_after}])[-1]["step"]
            _past(run, now + (fault_after - now) % interval, proc, timeout_s=60 * interval)  # off a save step
        pid = _rank_pid(run)
        fault_time = time.time()
        os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        if fault == "hang":
            killed = peers.wait_until(lambda: not peers.alive(pid), hang_timeout_s + recover_within_s)
            result["hung_rank_killed_s"] = time.time() - fault_time if killed else None
            if not killed:
                result["failed"] = f"the stopped rank was not found hung within {hang_timeout_s + recover_within_s:.0f} s"
                return result
        figures = _resumed(run, fault_time, proc, recover_within_s)
        result["detected_s"] = _detected(peer, fault, run_dir, fault_time)
        if figures is None:
            result["failed"] = f"did not recover: {_failure(run, proc)}"
        else:
            result.update(figures)
        return result
    except RuntimeError as exc:
        return {"failed": str(exc)}
    finally:
        peers.stop(proc, run_dir)
        if (run_dir / "checkpoints").exists():  # the logs stay for a look; the checkpoints can be GBs
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def run(sizes: list[str] | None = None, faults: list[str] | None = None, peer_names: list[str] | None = None,
        hang_timeout: float = 10.0, recover_within: float = 180.0, keep: bool = False) -> dict:
    sizes, faults, peer_names = sizes or ["tiny"], faults or ["kill", "hang"], peer_names or list(peers.PEERS)
    base = Path(tempfile.mkdtemp(prefix="bigops-recovery-"))
    results: dict = {"benchmark": "recovery", "hang_timeout_s": hang_timeout, "runs": {}, "logs": str(base)}
    for size in sizes:
        for fault in faults:
            row = {peer: measure(peer, size, fault, base, hang_timeout, recover_within) for peer in peer_names}
            for peer in peer_names:
                if peer != "bigops" and "bigops" in row:
                    row[f"ratio_mttr_bigops_vs_{peer}"] = ratio(row["bigops"].get("mttr_s"), row[peer].get("mttr_s"))
            results["runs"][f"{size}/{fault}"] = row
    tiny_kill = results["runs"].get("tiny/kill", {})
    results["bigops"] = tiny_kill.get("bigops", {})  # the headline row of ``python -m benchmarks``
    results["ratio_mttr_bigops_vs_torchrun"] = tiny_kill.get("ratio_mttr_bigops_vs_torchrun")
    results["ratio_mttr_bigops_vs_nvrx"] = tiny_kill.get("ratio_mttr_bigops_vs_nvrx")
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
        results["logs"] = None
    return results


def _fmt(value, unit: str = " s") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def report(r: dict) -> None:
    print(f"recovery, one rank of 4 (TP 2 x PP 2) faulted; hang timeout {r['hang_timeout_s']:g} s for every detector:")
    for key, row in r["runs"].items():
        print(f"  {key}:")
        for peer in peers.PEERS:
            if peer not in row:
                continue
            m = row[peer]
            found = ""
            if m.get("detected_s") is not None:
                found = f"detected {_fmt(m['detected_s'])}, "
            if "hung_rank_killed_s" in m:
                found += f"hung rank killed {_fmt(m['hung_rank_killed_s'])}, "
            if m.get("spares_warm"):
                found += f"spares {m['spares_warm']} warm, "
            if m.get("failed"):
                print(f"    {peer:<9} {found}{m['failed']}")
            else:
                print(f"    {peer:<9} {found}fault -> first resumed step {_fmt(m['mttr_s'])}, steps lost {m['steps_lost']}, "
                      f"load {_fmt(m['load_s'])} ({m['checkpoint_bytes'] / 1e6:,.0f} MB), overhead beyond the load "
                      f"{_fmt(m['overhead_s'])}")
        for peer in peers.PEERS[1:]:
            value = row.get(f"ratio_mttr_bigops_vs_{peer}")
            if value is not None:
                print(f"    MTTR bigops / {peer}: {value:.2f}" + (" (goal <= 0.5)" if peer == "nvrx" else ""))
    if r.get("logs"):
        print(f"  logs: {r['logs']}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description="Recovery (MTTR) side by side: bigops, torchrun and NVRx's ft_launcher, the same run, the same fault.")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["tiny"])
    parser.add_argument("--faults", nargs="+", choices=["kill", "hang"], default=["kill", "hang"])
    parser.add_argument("--peers", dest="peer_names", nargs="+", choices=list(peers.PEERS), default=list(peers.PEERS))
    parser.add_argument("--hang-timeout", type=float, default=10.0, help="every peer's hang timeout (s)")
    parser.add_argument("--recover-within", type=float, default=180.0,
                        help="give up on a peer that has not resumed this long after the fault (s)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders' logs (checkpoints are removed)")
    return main_of(parser, run, report, argv)


if __name__ == "__main__":
    main()
