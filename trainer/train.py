"""The per-rank training entry point: ``python -m trainer.train --run-dir RUN`` under torchrun.

Reads ``RUN/run.toml``, builds this rank's slice of BLOOM, trains to ``train.train_steps`` (resuming from
``checkpoints/latest`` when there is one), writes one metrics record per step (rank 0) and checkpoints.
The launcher (``bigops launch``) writes run.toml and starts the ranks.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from trainer import config as config_mod
from trainer.data.sampler import micro_batches
from trainer.data.synthetic import synthetic_sample
from trainer.engine import RankContext, build_engine, setup_rank
from trainer.rundir import RunDir, append_jsonl, atomic_write_text

EXIT_OK = 0
EXIT_CONFIG = 2


def tag_for(step: int) -> str:
    return f"global_step{step}"


def save_checkpoint(engine, ctx: RankContext, run: RunDir, step: int, consumed_samples: int) -> str:
    """All ranks write their files, then rank 0 points ``latest`` at the new tag (atomically, last)."""
    tag = tag_for(step)
    client_state = {"bigops": {"step": step, "consumed_samples": consumed_samples,
                               "config": config_mod.to_dict(ctx.cfg)}}
    engine.save_checkpoint(str(run.checkpoints), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()
    if ctx.is_logging_rank:
        atomic_write_text(run.latest, tag + "\n")
    dist.barrier()
    return tag


def init_from_hf(ctx: RankContext, directory: str):
    """A callback that loads a HF BLOOM checkpoint into this rank's layers (any TP/PP layout)."""
    from trainer.hf import check_compatible, open_hf_tensors, read_hf_config
    from trainer.pipeline import load_global_weights

    check_compatible(ctx.cfg.model, read_hf_config(directory))
    get = open_hf_tensors(directory)
    return lambda pipe: load_global_weights(pipe, ctx.cfg, ctx.tp, get)


def train(run: RunDir, init_hf: str | None = None, save_interval: int = 0) -> int:
    cfg = config_mod.load_toml(run.run_toml, base=config_mod.RunConfig())
    ctx = setup_rank(cfg)
    cfg = ctx.cfg
    engine = build_engine(ctx, init_weights=init_from_hf(ctx, init_hf) if init_hf else None)

    step, consumed = 0, 0
    tag = run.latest_tag()
    if tag is not None:
        with torch.no_grad():  # loading re-broadcasts tied weights (see build_pipeline_module)
            _, client = engine.load_checkpoint(str(run.checkpoints), tag=tag)
        state = (client or {}).get("bigops", {})
        step, consumed = state.get("step", 0), state.get("consumed_samples", 0)

    vocab, seq, seed = cfg.model.vocab_size, cfg.train.seq_length, cfg.train.seed
    data = micro_batches(step, ctx.coords.dp_rank, global_batch=cfg.train.global_batch_size,
                         micro_batch=cfg.train.micro_batch_size, dp=ctx.dims.dp,
                         sample=lambda i: synthetic_sample(i, seq, vocab, seed))
    tokens_per_step = cfg.train.global_batch_size * seq
    while step < cfg.train.train_steps:
        lr = engine.get_lr()[0]  # the rate this step applies (the scheduler advances inside train_batch)
        started = time.perf_counter()
        loss = engine.train_batch(data_iter=data)
        elapsed = time.perf_counter() - started
        step += 1
        consumed += cfg.train.global_batch_size
        grad_norm = engine.get_global_grad_norm()
        if ctx.is_logging_rank:
            grad_norm = float(grad_norm) if grad_norm is not None else None
            append_jsonl(run.metrics, {
                "step": step, "time": time.time(), "loss": float(loss), "grad_norm": grad_norm,
                "lr": lr, "tokens_per_second": tokens_per_step / elapsed,
                "consumed_samples": consumed, "skipped": grad_norm is not None and not math.isfinite(grad_norm),
            })
        if save_interval and step % save_interval == 0 and step < cfg.train.train_steps:
            save_checkpoint(engine, ctx, run, step, consumed)
    if run.latest_tag() != tag_for(step):
        save_checkpoint(engine, ctx, run, step, consumed)
    dist.barrier()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--init-hf", default=None, help="initial weights from a HF BLOOM directory")
    parser.add_argument("--save-interval", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return train(RunDir(args.run_dir), init_hf=args.init_hf, save_interval=args.save_interval)
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(main())
