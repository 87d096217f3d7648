"""Communication between tensor-parallel ranks, as autograd functions (Megatron-LM's vocabulary).

=========================================  ===================  =====================
function                                   forward              backward
=========================================  ===================  =====================
``copy_to_tensor_model_parallel_region``   identity             all-reduce
``reduce_from_tensor_model_parallel_region``  all-reduce        identity
``scatter_to_tensor_model_parallel_region``   keep my last-dim chunk   all-gather
``gather_from_tensor_model_parallel_region``  all-gather last dim      keep my chunk
=========================================  ===================  =====================

Every function takes a :class:`TPGroup`; with one rank they are all the identity, so the same layer code
runs unsharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    """The tensor-parallel group this rank belongs to: its process group, rank in it, and size."""

    group: dist.ProcessGroup | None = None
    rank: int = 0
    size: int = 1
    ranks: tuple[int, ...] = (0,)
    """Global ranks of the group, in TP-rank order."""

    @classmethod
    def single(cls) -> "TPGroup":
        return cls()


def _all_reduce(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    if tp.size == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=tp.group)
    return x


def _split_last_dim(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    if tp.size == 1:
        return x
    return x.chunk(tp.size, dim=-1)[tp.rank].contiguous()


def _gather_last_dim(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    if tp.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tp.size)]
    dist.all_gather(parts, x.contiguous(), group=tp.group)
    return torch.cat(parts, dim=-1)


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.tp), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        return _all_reduce(x.clone(), tp)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _split_last_dim(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last_dim(grad, ctx.tp), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _gather_last_dim(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad, ctx.tp), None


def copy_to_tensor_model_parallel_region(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _CopyToRegion.apply(x, tp)


def reduce_from_tensor_model_parallel_region(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _ReduceFromRegion.apply(x, tp)


def scatter_to_tensor_model_parallel_region(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _ScatterToRegion.apply(x, tp)


def gather_from_tensor_model_parallel_region(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _GatherFromRegion.apply(x, tp)
