"""Parallel overhead: the step time of TP=2, PP=2 (with its pipeline bubble) and DP=2 against TP=PP=DP=1 on
the same model and the same global batch, each a real run of the trainer (torchrun, gloo on CPU, NCCL on a
GPU machine with several GPUs). The ratio is step time / the single rank's step time: on one machine's
cores the parallel runs share the same compute, so the ratio is the communication and bubble cost (a
ratio below 1 means the split also bought speed). ``python -m benchmarks.parallel_overhead``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from launcher.local import free_port, rank_command, rank_env
from trainer import config as config_mod
from trainer.rundir import RunDir, read_jsonl

LAYOUTS = {"TP1 PP1 DP1": (1, 1, 1), "TP2": (2, 1, 1), "PP2": (1, 2, 1), "DP2": (1, 1, 2)}


def _config(tp: int, pp: int, dp: int, args) -> config_mod.RunConfig:
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=args.hidden, num_layers=args.layers,
                                       num_attention_heads=args.heads, vocab_size=args.vocab)
    cfg.parallel = config_mod.ParallelConfig(tp=tp, pp=pp, dp=dp)
    cfg.train = config_mod.TrainConfig(seq_length=args.seq, micro_batch_size=args.micro_batch,
                                       global_batch_size=args.global_batch, train_steps=args.steps,
                                       warmup_steps=1, save_interval=0, eval_interval=0, ln_desync_interval=0)
    cfg.data.source = "synthetic"
    return cfg


def _median_step_seconds(cfg: config_mod.RunConfig, world: int, base: Path, skip: int) -> float:
    run = RunDir(base / f"tp{cfg.parallel.tp}pp{cfg.parallel.pp}dp{cfg.parallel.dp}")
    run.root.mkdir(parents=True)
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    proc = subprocess.run(rank_command(run.root, world, free_port()), env=rank_env(world),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{world} ranks failed: {proc.stderr[-2000:]}")
    return statistics.median(r["step_seconds"] for r in read_jsonl(run.metrics)[skip:])


def run(args) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-parallel-"))
    try:
        seconds = {}
        for name, (tp, pp, dp) in LAYOUTS.items():
            seconds[name] = _median_step_seconds(_config(tp, pp, dp, args), tp * pp * dp, base, skip=2)
        single = seconds["TP1 PP1 DP1"]
        micro_batches = args.global_batch // args.micro_batch
        return {
            "benchmark": "parallel_overhead",
            "config": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "seq": args.seq,
                       "global_batch": args.global_batch, "micro_batch": args.micro_batch, "steps": args.steps,
                       "pp2_bubble_fraction": 1 / (micro_batches + 1)},
            "step_seconds": seconds,
            "ratio_vs_single_rank": {name: s / single for name, s in seconds.items()},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("hidden", 256), ("layers", 4), ("heads", 8), ("vocab", 8192), ("seq", 128),
                          ("global_batch", 16), ("micro_batch", 4), ("steps", 12)):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        c = result["config"]
        print(f"parallel overhead: h {c['hidden']}, {c['layers']} layers, seq {c['seq']}, global batch "
              f"{c['global_batch']} (micro {c['micro_batch']}), median step time over steps 3..{c['steps']}")
        for name, s in result["step_seconds"].items():
            print(f"  {name:<12} {s * 1e3:8.1f} ms/step  ratio {result['ratio_vs_single_rank'][name]:.2f}")
        print(f"  (PP2's ideal bubble with {c['global_batch'] // c['micro_batch']} micro-batches: "
              f"{c['pp2_bubble_fraction']:.0%} of a step)")
    return result


if __name__ == "__main__":
    main()
