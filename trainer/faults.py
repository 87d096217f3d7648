"""Fault injection for tests and drills, off unless an environment variable asks for it.

- ``BIGOPS_FAULT_CORRUPT_SAMPLES=START-END``: samples at positions [START, END) are replaced by uniformly
  random tokens (a corrupt shard: the loss spikes while they are read).
- ``BIGOPS_FAULT_CRASH_AT_STEP=N``: every rank raises before training step N (a crash that recurs on
  every restart: a crash loop for the watchdog's restart budget).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

CORRUPT = "BIGOPS_FAULT_CORRUPT_SAMPLES"
CRASH = "BIGOPS_FAULT_CRASH_AT_STEP"


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
        raise InjectedCrash(f"fault injected by {CRASH}={spec}")
