"""Fault injection for tests and drills, off unless an environment variable asks for it.

- ``BIGOPS_FAULT_CORRUPT_SAMPLES=START-END``: samples at positions [START, END) are replaced by uniformly
  random tokens (a corrupt shard: the loss spikes while they are read).
- ``BIGOPS_FAULT_CRASH_AT_STEP=N``: every rank raises before training step N (a crash that recurs on
  every restart: a crash loop for the watchdog's restart budget).
- ``BIGOPS_FAULT_CRASH_ONCE=PATH``: with ``BIGOPS_FAULT_CRASH_AT_STEP``, each rank crashes only the first
  time it reaches that step (it leaves ``PATH.rank<N>`` behind): one crash, then a restart that finishes.
- ``BIGOPS_FAULT_SLOW_RANK=RANK:SECONDS[,RANK:SECONDS...]``: that rank sleeps SECONDS in its module's forward,
  every training micro-batch (a straggler; see ``trainer.telemetry.Heartbeat.attach``).
- ``BIGOPS_FAULT_DESYNC_AT_STEP=N``: after step N, TP rank 1 of every TP group adds 0.01 to its layer-norm
  weights and their fp32 masters (BLOOM's TP desync, on demand).
- ``BIGOPS_FAULT_SURGERY_PAUSE=SECONDS``: ``bigops surgery`` sleeps that long after each file it writes (so a
  test can SIGKILL it mid-way).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

CORRUPT = "BIGOPS_FAULT_CORRUPT_SAMPLES"
CRASH = "BIGOPS_FAULT_CRASH_AT_STEP"
CRASH_ONCE = "BIGOPS_FAULT_CRASH_ONCE"
SLOW_RANK = "BIGOPS_FAULT_SLOW_RANK"
DESYNC = "BIGOPS_FAULT_DESYNC_AT_STEP"
SURGERY_PAUSE = "BIGOPS_FAULT_SURGERY_PAUSE"


class InjectedCrash(RuntimeError):
    pass


def corrupt_samples(sample: Callable[[int], torch.Tensor], vocab_size: int) -> Callable[[int], torch.Tensor]:
    spec = os.environ.get(CORRUPT)
    if not spec:
        return sample
    start, _, end = spec.partition("-")
    lo, hi = int(start), int(end)

    def faulty(position: int) -> torch.Tensor:
        tokens = sample(position)
        if lo <= position < hi:
            gen = torch.Generator().manual_seed(position)
            return torch.randint(0, vocab_size, tokens.shape, generator=gen)
        return tokens
    return faulty


def maybe_crash(next_step: int) -> None:
    spec = os.environ.get(CRASH)
    if spec and int(spec) == next_step:
        once = os.environ.get(CRASH_ONCE)
        if once:
            marker = f"{once}.rank{os.environ.get('RANK', '0')}"
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # this rank crashed here once already
        raise InjectedCrash(f"fault injected by {CRASH}={spec}")


def slow_forward_seconds(rank: int, spec: str | None = None) -> float:
    """Seconds this rank should sleep per forward call, from ``BIGOPS_FAULT_SLOW_RANK`` (0.0: none)."""
    spec = os.environ.get(SLOW_RANK) if spec is None else spec
    for item in (spec or "").split(","):
        who, sep, seconds = item.strip().partition(":")
        if sep and who.strip().isdigit() and int(who) == rank:
            return max(0.0, float(seconds))
    return 0.0


@torch.no_grad()
def maybe_desync(step: int, module: torch.nn.Module, tp_rank: int) -> bool:
    """Knock TP rank 1's layer norms off their TP peers' values (weights and fp32 masters) after step N.

    Collective over the DP group for DeepSpeed-managed masters: every rank with the same TP rank calls it.
    """
    spec = os.environ.get(DESYNC)
    if not spec or int(spec) != step or tp_rank != 1:
        return False
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
    for name, param in module.named_parameters():
        if "layernorm" not in name and "ln_f" not in name:
            continue
        if hasattr(param, "_hp_mapping"):
            master = safe_get_full_fp32_param(param).float() + 0.01
            safe_set_full_fp32_param(param, master)
            param.copy_(master.to(param.dtype))
        else:
            param.add_(0.01)
    return True


def surgery_pause() -> None:
    seconds = os.environ.get(SURGERY_PAUSE)
    if seconds:
        import time
        time.sleep(float(seconds))
