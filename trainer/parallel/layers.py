"""Megatron-style tensor-parallel layers, holding only this rank's shard of each weight.

Every sharded parameter carries ``tensor_model_parallel = True`` (and DeepSpeed's ``model_parallel``):
DeepSpeed counts such tensors once per TP rank in the global grad norm, and counts the others (layer
norms, row-parallel biases, duplicated on every TP rank) only once. Without the tag the norm, and so
clipping, is silently wrong (see ../shared/FACTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.parallel.mappings import (TPGroup, copy_to_tensor_model_parallel_region,
                                       gather_from_tensor_model_parallel_region,
                                       reduce_from_tensor_model_parallel_region,
                                       scatter_to_tensor_model_parallel_region)


def mark_tensor_parallel(param: nn.Parameter, partition_dim: int) -> None:
    """Tag a sharded parameter the way DeepSpeed and Megatron look for it."""
    param.tensor_model_parallel = True
    param.model_parallel = True
    param.partition_dim = partition_dim


def mark_parallel_parameters(module: nn.Module) -> None:
    """Re-tag every TP layer's shards under ``module``. Needed after anything that replaces Parameter
    objects (``Module.to_empty`` from ``meta``, some ``.to()`` calls): the tags live on the objects."""
    for sub in module.modules():
        if isinstance(sub, (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)):
            sub.mark_parameters()


def _divide(n: int, tp: TPGroup, what: str) -> int:
    if n % tp.size:
        raise ValueError(f"{what}={n} is not divisible by the tensor-parallel size {tp.size}")
    return n // tp.size


class ColumnParallelLinear(nn.Module):
    """Y = XA + b with A split by columns, A = [A_1 ... A_p]: rank i computes Y_i = X A_i + b_i.

    Weight (out/p, in) holds rows i*out/p .. (i+1)*out/p of the full (out, in) weight. The input is copied
    into the TP region (its gradient is all-reduced); with ``gather_output`` the Y_i are all-gathered.
    """

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, bias: bool = True,
                 gather_output: bool = False, device=None, dtype=None):
        super().__init__()
        self.tp, self.gather_output = tp, gather_output
        self.in_features, self.out_features = in_features, out_features
        local_out = _divide(out_features, tp, "output features")
        self.weight = nn.Parameter(torch.empty(local_out, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(local_out, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.mark_parameters()

    def mark_parameters(self) -> None:
        mark_tensor_parallel(self.weight, 0)
        if self.bias is not None:
            mark_tensor_parallel(self.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_tensor_model_parallel_region(x, self.tp)
        y = F.linear(x, self.weight, self.bias)  # (..., out/p)
        return gather_from_tensor_model_parallel_region(y, self.tp) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """Y = XA + b with A split by rows, A = [A_1; ...; A_p] and X = [X_1 ... X_p]: Y = sum_i X_i A_i + b.

    Weight (out, in/p). The partial products are all-reduced, then the bias (duplicated on every TP rank,
    hence not tagged) is added once. With ``input_is_parallel`` the input is already this rank's X_i.
    """

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, bias: bool = True,
                 input_is_parallel: bool = True, device=None, dtype=None):
        super().__init__()
        self.tp, self.input_is_parallel = tp, input_is_parallel
        self.in_features, self.out_features = in_features, out_features
        local_in = _divide(in_features, tp, "input features")
        self.weight = nn.Parameter(torch.empty(out_features, local_in, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.mark_parameters()

    def mark_parameters(self) -> None:
        mark_tensor_parallel(self.weight, 1)  # the bias is duplicated on every TP rank: not tagged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tensor_model_parallel_region(x, self.tp)
        y = reduce_from_tensor_model_parallel_region(F.linear(x, self.weight), self.tp)  # (..., out)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """An embedding whose rows (the padded vocabulary) are split over TP ranks.

    Rank i holds token ids [i*V/p, (i+1)*V/p); ids outside its range look up zeros, and the all-reduce sums
    the one non-zero row per token.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tp: TPGroup, device=None, dtype=None):
        super().__init__()
        self.tp = tp
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        per_rank = _divide(num_embeddings, tp, "padded vocabulary size")
        self.vocab_start, self.vocab_end = tp.rank * per_rank, (tp.rank + 1) * per_rank
        self.weight = nn.Parameter(torch.empty(per_rank, embedding_dim, device=device, dtype=dtype))
        self.mark_parameters()

    def mark_parameters(self) -> None:
        mark_tensor_parallel(self.weight, 0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local_ids = (input_ids - self.vocab_start).masked_fill(outside, 0)
        y = F.embedding(local_ids, self.weight).masked_fill(outside[..., None], 0.0)  # (B, T, C)
        return reduce_from_tensor_model_parallel_region(y, self.tp)


def parallel_lm_logits(hidden: torch.Tensor, embedding_weight: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """The tied LM head: (B, T, C) @ (V/p, C)^T -> this rank's vocabulary shard of the logits (B, T, V/p)."""
    return F.linear(copy_to_tensor_model_parallel_region(hidden, tp), embedding_weight)
