"""Cross-rank sanity checks: are the tensors every TP rank should hold identically still identical?

BLOOM-176B's layer norms drifted apart across its 4 TP ranks (a bf16 optimizer bug left TP ranks > 0
unclipped) and nothing flagged it for weeks. This measures that drift, cheaply: one flattened broadcast per
check from TP rank 0, then one all-reduce (MAX) over all ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainer.parallel.mappings import TPGroup


@torch.no_grad()
def tp_desync(module: nn.Module, tp: TPGroup) -> float:
    """Max |p - p_on_TP_rank_0| over every TP-duplicated parameter of every rank (0.0 when in sync).

    Collective: every rank must call it. Duplicated = not tagged ``tensor_model_parallel`` (layer-norm
    weights and biases, row-parallel biases).
    """
    duplicated = [p.detach().float().flatten() for p in module.parameters()
                  if not getattr(p, "tensor_model_parallel", False)]
    local = torch.zeros((), dtype=torch.float32)
    if tp.size > 1 and duplicated:
        mine = torch.cat(duplicated)
        reference = mine.clone()
        dist.broadcast(reference, src=tp.ranks[0], group=tp.group)
        local = (mine - reference).abs().max()
    dist.all_reduce(local, op=dist.ReduceOp.MAX)
    return float(local)
