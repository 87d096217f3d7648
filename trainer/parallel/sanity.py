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


ADAM_STATE_KEYS = ("exp_avg", "exp_avg_sq")


def _tp_mean_(tensor: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Average ``tensor`` (fp32) over the TP group, in place."""
    dist.all_reduce(tensor, group=tp.group)
    return tensor.div_(tp.size)


@torch.no_grad()
def sync_tp_duplicated(module: nn.Module, optimizer, tp: TPGroup, with_moments: bool = True) -> int:
    """Make every TP-duplicated parameter identical across its TP group, in place, at a step boundary: the
    weights, the fp32 master weights and Adam's moments (BLOOM's fix, live). Returns how many parameters.

    Collective: every rank calls it (TP peers and DP peers hold the same parameter list, in the same order).
    Under DeepSpeed's BF16_Optimizer / ZeRO-1, a parameter's master and moments are fragments of flat DP
    partitions, reached through DeepSpeed's ``safe_get/set_full_*`` (which all-reduce over the DP group); with
    plain fp32 the parameter is its own master and the moments sit in ``optimizer.state``.
    ``with_moments=False`` (before the first optimizer step, when Adam has no state yet) skips the moments.
    """
    if tp.size == 1:
        return 0
    from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state,
                                 safe_set_full_fp32_param, safe_set_full_optimizer_state)
    count = 0
    for param in module.parameters():
        if getattr(param, "tensor_model_parallel", False) or not param.requires_grad:
            continue
        if hasattr(param, "_hp_mapping"):  # DeepSpeed keeps the fp32 master (possibly on another DP rank)
            master = _tp_mean_(safe_get_full_fp32_param(param).float(), tp)
            safe_set_full_fp32_param(param, master)
            param.copy_(master.to(param.dtype))  # the low-precision copy the next forward uses
            for key in ADAM_STATE_KEYS if with_moments else ():
                value = _tp_mean_(safe_get_full_optimizer_state(param, key).float(), tp)
                safe_set_full_optimizer_state(param, value, key)
        else:
            param.copy_(_tp_mean_(param.detach().float(), tp).to(param.dtype))
            state = getattr(optimizer, "state", {}).get(param, {}) if optimizer is not None else {}
            for key in ADAM_STATE_KEYS:
                if key in state:
                    state[key].copy_(_tp_mean_(state[key].float(), tp).to(state[key].dtype))
        count += 1
    return count
