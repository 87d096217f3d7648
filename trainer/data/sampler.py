"""Which samples a step reads: a pure function of ``consumed_samples``, the skip ranges and the layout.

A run reads the stream of sample positions 0, 1, 2, ... in order. Step s takes the next G positions not
inside a skip range (the ranges are set after a loss-spike rollback, like Megatron's
``--skip-train-iteration-range``), and ``consumed_samples`` becomes the position after the last one taken.
Micro-batch ``m`` of DP rank ``d`` holds taken positions ``(m*dp + d)*mb ... + mb``. The union over ranks and
micro-batches is the whole global batch whatever the layout, so every layout sees the same data as a
single-rank run, and a resume from ``consumed_samples`` continues with exactly the next batch.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch


def batch_positions(consumed: int, count: int, skip_ranges: Sequence[tuple[int, int]] = ()) -> tuple[list[int], int]:
    """The next ``count`` positions from ``consumed`` outside ``skip_ranges`` (sorted, merged, end-exclusive),
    and the new ``consumed``."""
    positions: list[int] = []
    position = consumed
    ranges = sorted(skip_ranges)
    r = 0
    while len(positions) < count:
        while r < len(ranges) and ranges[r][1] <= position:
            r += 1
        if r < len(ranges) and ranges[r][0] <= position < ranges[r][1]:
            position = ranges[r][1]
            continue
        positions.append(position)
        position += 1
    return positions, position


def rank_micro_batches(positions: list[int], dp_rank: int, *, micro_batch: int, dp: int,
                       sample: Callable[[int], torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels), each (mb, T), for this DP rank's micro-batches of one global batch."""
    accumulation = len(positions) // (micro_batch * dp)
    for micro in range(accumulation):
        start = (micro * dp + dp_rank) * micro_batch
        tokens = torch.stack([sample(p) for p in positions[start:start + micro_batch]])  # (mb, T+1)
        yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
