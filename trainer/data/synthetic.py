"""A deterministic synthetic corpus: sample ``i`` is a function of (seed, i) only.

Each sample is a bounded random walk over token ids (the next id is the previous one plus a step in
[-2, 2]), so a model can learn it (the loss falls from ln V towards ln 5) and every parallel layout sees
exactly the same tokens for the same sample index. Real text comes with the training-run issue.
"""

from __future__ import annotations

import torch


def synthetic_sample(index: int, seq_length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """``seq_length + 1`` token ids (inputs plus the shifted labels) of sample ``index``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    start = torch.randint(0, vocab_size, (1,), generator=gen)
    steps = torch.randint(-2, 3, (seq_length,), generator=gen)
    return torch.cat([start, start + steps.cumsum(0)]).remainder(vocab_size)  # (T+1,)
