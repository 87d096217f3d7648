"""The tensor-parallel plan of BLOOM: which parameter is split along which dimension, in one table.

Everything that shards or merges weights uses this table: building a TP rank's layers, importing a Hugging
Face checkpoint into any TP layout, exporting any checkpoint back, and (later) comparing TP-duplicated
parameters across ranks. Names are the HF ones without the ``transformer.`` prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.model.bloom import BloomBlock, alibi_slopes
from trainer.parallel.layers import ColumnParallelLinear, RowParallelLinear
from trainer.parallel.mappings import TPGroup

# module-name suffix -> how that layer is split over TP ranks (Megatron's layout). Everything not named here
# (layer norms, row-parallel biases) is duplicated on every TP rank.
TP_PLAN: dict[str, str] = {
    "word_embeddings": "vocab",                       # vocab-parallel rows (built so by trainer.pipeline)
    "self_attention.query_key_value": "column",       # whole heads per rank: outputs stay split
    "self_attention.dense": "row",                    # all-reduces; its bias is added once, duplicated
    "mlp.dense_h_to_4h": "column",
    "mlp.dense_4h_to_h": "row",
}

# style -> the dimension each of its parameters is split along (absent: duplicated on every TP rank)
STYLE_SHARD_DIMS: dict[str, dict[str, int]] = {
    "vocab": {"weight": 0},
    "column": {"weight": 0, "bias": 0},
    "row": {"weight": 1},
}

# parameter-name suffix -> dimension split over TP ranks, derived from TP_PLAN so the two cannot disagree.
SHARD_DIMS: dict[str, int] = {f"{module}.{param}": dim for module, style in TP_PLAN.items()
                              for param, dim in STYLE_SHARD_DIMS[style].items()}

# the linear layer classes a block's plan entries become
PARALLEL_LINEARS: dict[str, type[nn.Module]] = {"column": ColumnParallelLinear, "row": RowParallelLinear}


def shard_dim(name: str) -> int | None:
    """The dimension ``name`` is split along over TP ranks, or None if every TP rank holds all of it."""
    for suffix, dim in SHARD_DIMS.items():
        if name == suffix or name.endswith("." + suffix):
            return dim
    return None


def is_tp_duplicated(name: str) -> bool:
    """True for tensors every TP rank holds a full copy of (layer norms, row-parallel biases): the ones that
    must stay bit-identical across TP ranks and that drifted apart in BLOOM-176B."""
    return shard_dim(name) is None


def shard(name: str, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's part of a full tensor."""
    dim = shard_dim(name)
    if dim is None or tp_size == 1:
        return full
    if full.size(dim) % tp_size:
        raise ValueError(f"{name}: size {full.size(dim)} along dim {dim} is not divisible by TP {tp_size}")
    return full.chunk(tp_size, dim=dim)[tp_rank]


def merge(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from all TP ranks' parts (rank order); duplicated tensors take rank 0's copy."""
    dim = shard_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    return torch.cat(shards, dim=dim)


def parallelize_block(block: BloomBlock, tp: TPGroup) -> BloomBlock:
    """Swap a block's linears for column/row-parallel ones holding this rank's shard (in place), as
    ``TP_PLAN`` says.

    Call it on a block built on the ``meta`` device, then materialize and initialize: no full-size weight
    is ever allocated. QKV and h->4h are column-parallel, their outputs stay split; the attention output
    projection and 4h->h are row-parallel and all-reduce. Two all-reduces per block forward, as Megatron.
    """
    for name, style in TP_PLAN.items():
        if style not in PARALLEL_LINEARS:
            continue  # not a block layer (the vocab-parallel embedding)
        parent_name, _, child = name.rpartition(".")
        parent = block.get_submodule(parent_name)
        linear: nn.Linear = getattr(parent, child)
        setattr(parent, child, PARALLEL_LINEARS[style](linear.in_features, linear.out_features, tp,
                                                        bias=linear.bias is not None,
                                                        device=linear.weight.device))
    return block


def local_alibi_slopes(num_heads: int, tp: TPGroup) -> torch.Tensor:
    """The ALiBi slopes of the heads this TP rank owns (a contiguous block of heads)."""
    return alibi_slopes(num_heads).chunk(tp.size)[tp.rank].clone()
