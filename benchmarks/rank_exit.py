"""How long a rank lives after it has written everything: ``python -m benchmarks.rank_exit [--rounds 3] [--json]``.

A tiny run (TP 2 x PP 2, 4 gloo ranks under torchrun, 3 steps) is started, its rank processes polled every
50 ms; the figures are from the rank's exit record (``telemetry/exit.json``, written last) to the last rank gone
and to torchrun's exit. Alternated, ``--rounds`` times each: the trainer as it is (``trainer.train.exit_now``:
exit handlers, then the process ends) against the baseline of a plain ``sys.exit(main())``, whose interpreter
teardown of torch and DeepSpeed the next launch used to wait for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cli import main_of

TINY = ["data.source=synthetic", "model.vocab_size=512", "train.seq_length=32", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.train_steps=3"]
MODES = ("sys.exit (baseline)", "exit_now")


def rank_pids(parent: int) -> set[int]:
    """The live children of ``parent`` (torchrun's ranks), from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            data = stat.read_bytes()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == parent and fields[0] not in (b"Z", b"X"):
            out.add(int(stat.parent.name))
    return out


def one_launch(folder: Path, mode: str) -> dict:
    """One tiny launch in ``mode``: seconds from the exit record to the last rank gone and to torchrun's exit."""
    from launcher import plan
    from launcher.local import free_port, rank_command, rank_env
    from trainer import config as config_mod
    from trainer.rundir import RunDir
    run = RunDir(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run.run_toml.write_text(config_mod.dumps_toml(plan.fresh_config("tiny", None, TINY)))
    command = rank_command(folder, 4, free_port())
    if mode == MODES[0]:
        command[command.index("trainer.train")] = "benchmarks.rank_exit"  # this module, as a rank: sys.exit(main())
        command.insert(command.index("--run-dir"), "--as-rank")
    proc = subprocess.Popen(command, env=rank_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gone: dict[int, float] = {}
    seen: set[int] = set()
    while proc.poll() is None:
        live, now = rank_pids(proc.pid), time.time()
        seen |= live
        for pid in seen - live:
            gone.setdefault(pid, now)
        time.sleep(0.05)
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"the tiny launch failed (rc {proc.returncode}) in {folder}")
    written = json.loads(run.exit_record.read_text())["time"]
    return {"last_rank_gone_s": max(gone.values(), default=ended) - written, "torchrun_exit_s": ended - written}


def run(rounds: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-rank-exit-"))
    try:
        samples: dict[str, list[dict]] = {m: [] for m in MODES}
        for i in range(rounds):
            for mode in MODES:
                samples[mode].append(one_launch(base / f"{i}", mode))
        out = {}
        for mode, values in samples.items():
            out[mode] = {key: {"median": statistics.median(v[key] for v in values),
                               "min": min(v[key] for v in values), "max": max(v[key] for v in values)}
                         for key in ("last_rank_gone_s", "torchrun_exit_s")}
        ours, baseline = out[MODES[1]]["torchrun_exit_s"]["median"], out[MODES[0]]["torchrun_exit_s"]["median"]
        return {"rounds": rounds, "modes": out, "ratio_exit_now_vs_sys_exit": ours / baseline if baseline else None}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def report(result: dict) -> None:
    print(f"exit record -> (seconds, {result['rounds']} alternated rounds each, 4 ranks)")
    for mode, figures in result["modes"].items():
        parts = ", ".join(f"{key} {f['min']:.2f}-{f['max']:.2f} (median {f['median']:.2f})" for key, f in figures.items())
        print(f"  {mode:<20} {parts}")
    print(f"torchrun exit, exit_now / sys.exit: {result['ratio_exit_now_vs_sys_exit']:.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    return main_of(parser, run, report, argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-rank"]:  # a baseline rank: the trainer, ended by a plain interpreter exit
        from trainer.train import main as rank_main
        sys.exit(rank_main(sys.argv[2:]))
    main()
