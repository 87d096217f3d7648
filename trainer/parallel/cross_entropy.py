"""Cross-entropy over logits whose vocabulary dimension is split over TP ranks, without gathering them.

loss = log(sum_v exp(z_v - m)) - (z_target - m), with m the global max: each rank contributes its local
max, its local sum of exponentials and, when it owns the target id, the target logit; three all-reduces of
(B, T) tensors replace an all-gather of (B, T, V).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.parallel.mappings import TPGroup


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, tp: TPGroup) -> torch.Tensor:
        ctx.input_dtype = logits.dtype
        # One fp32 working copy (B, T, V/p), then everything in place: with BLOOM's 250k vocabulary the
        # logits are the largest activation (8 GB in fp32 at micro-batch 4 x 2048), so copies matter.
        shifted = logits.float() if logits.dtype != torch.float32 else logits.clone()
        local_max = shifted.max(dim=-1).values
        if tp.size > 1:
            dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=tp.group)
        shifted.sub_(local_max.unsqueeze(-1))

        per_rank = shifted.size(-1)
        start = tp.rank * per_rank
        outside = (target < start) | (target >= start + per_rank)
        local_target = (target - start).masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)

        exp = shifted.exp_()
        sum_exp = exp.sum(dim=-1)
        if tp.size > 1:
            dist.all_reduce(target_logit, group=tp.group)
            dist.all_reduce(sum_exp, group=tp.group)
        loss = sum_exp.log() - target_logit  # (B, T)

        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax  # d loss / d z_v = softmax_v - 1[v == target]
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -(~outside).unsqueeze(-1).to(grad.dtype))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Per-token loss (B, T) from vocabulary-sharded logits (B, T, V/p) and global target ids (B, T)."""
    return _VocabParallelCrossEntropy.apply(logits, target, tp)


def mean_vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """The training loss: mean over all tokens of the micro-batch."""
    return vocab_parallel_cross_entropy(logits, target, tp).mean()
