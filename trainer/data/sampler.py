"""Which samples a rank reads: a pure function of the step, the batch sizes and the rank's DP coordinate.

Step ``s`` consumes the global samples [s*G, (s+1)*G). Micro-batch ``m`` of DP rank ``d`` holds samples
``s*G + (m*dp + d)*mb ... + mb``. The union over ranks and micro-batches is the whole global batch whatever
the layout, so TP/PP/DP runs see the same data as a single-rank run, and a resumed run continues with
exactly the next batch.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch


def micro_batch_indices(step: int, micro: int, dp_rank: int, *, global_batch: int, micro_batch: int,
                        dp: int) -> range:
    start = step * global_batch + (micro * dp + dp_rank) * micro_batch
    return range(start, start + micro_batch)


def micro_batches(first_step: int, dp_rank: int, *, global_batch: int, micro_batch: int, dp: int,
                  sample: Callable[[int], torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels), each (mb, T), for every micro-batch of this DP rank from ``first_step`` on."""
    accumulation = global_batch // (micro_batch * dp)
    step = first_step
    while True:
        for micro in range(accumulation):
            idx = micro_batch_indices(step, micro, dp_rank, global_batch=global_batch,
                                      micro_batch=micro_batch, dp=dp)
            tokens = torch.stack([sample(i) for i in idx])  # (mb, T+1)
            yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        step += 1
