"""BLOOM as a DeepSpeed ``PipelineModule``: the layer list, its TP-sharded layers, and weight loading.

The layer list is Megatron-DeepSpeed's GPTModelPipe with ``--embed-layernorm`` (BigScience's BLOOM), so that
checkpoints have its layout: layer numbering and parameter names are :mod:`trainer.layout`'s table::

    0        a function (identity here)   where Megatron casts to fp16
    1        EmbeddingPipe                word embeddings (vocab-parallel) and their LayerNorm, tied "embed"
    2        a function (identity here)   where Megatron transposes to [s b h]
    3..L+2   TransformerBlockPipe         BLOOM blocks h.0 .. h.L-1 (column/row-parallel linears)
    L+3      a function (identity here)   where Megatron transposes back
    L+4      FinalLayerNormPipe           ln_f, keyed ``weight`` / ``bias``
    L+5      (tied) EmbeddingPipe         as the LM head: vocab-parallel logits (not saved: same weights as 1)

Partitioning with ``type:transformer|embedding`` counts both embedding occurrences as layers, as BLOOM did
(70 blocks + 2 = 72 layers over 12 stages); the functions weigh nothing. Every layer's ``state_dict`` key
maps to a Hugging Face parameter name through :func:`trainer.layout.hf_name`.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from trainer import layout
from trainer.config import RunConfig
from trainer.model.bloom import BloomBlock, init_parameters
from trainer.parallel.cross_entropy import mean_vocab_parallel_cross_entropy
from trainer.parallel.layers import VocabParallelEmbedding, mark_parallel_parameters, parallel_lm_logits
from trainer.parallel.mappings import TPGroup
from trainer.parallel.plan import local_alibi_slopes, parallelize_block, shard

TIED_KEY = layout.TIED_KEY


def _initialize(module: nn.Module, cfg: RunConfig, tp: TPGroup, layer: int) -> None:
    """BLOOM's init by HF name (the names decide the std and the per-parameter seed, so the weights are the
    same whatever the layout)."""
    sharded = {n for n, p in module.named_parameters() if getattr(p, "tensor_model_parallel", False)}
    init_parameters(module, cfg.model, cfg.train.seed, shard=tp.rank, sharded_names=sharded,
                    name_of=lambda key: layout.hf_name(cfg.model.num_layers, layer, key))


def _no_op(x):
    """A parameterless slot of Megatron's layer list (fp16 cast, transposes): keeps the layer numbering."""
    return x


class NormedVocabParallelEmbedding(VocabParallelEmbedding):
    """Megatron-DeepSpeed's VocabParallelEmbedding with ``--embed-layernorm``: the LayerNorm lives inside, as
    ``norm`` (BLOOM's embedding LayerNorm, what made BLOOM-176B train stably)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp: TPGroup, eps: float):
        super().__init__(num_embeddings, embedding_dim, tp)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(input_ids))  # (B, T, C)


class EmbeddingPipe(nn.Module):
    """Token ids (B, T) -> normalized embeddings (B, T, C); as the tied LM head see :func:`lm_head_forward`."""

    def __init__(self, cfg: RunConfig, tp: TPGroup):
        super().__init__()
        self.tp = tp
        self.word_embeddings = NormedVocabParallelEmbedding(cfg.padded_vocab_size, cfg.model.hidden_size, tp,
                                                            eps=cfg.model.layernorm_epsilon)
        _initialize(self, cfg, tp, layout.EMBEDDING_LAYER)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


def lm_head_forward(embedding: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    """The tied LM head: (B, T, C) -> this TP rank's vocabulary shard of the logits (B, T, V/p)."""
    return parallel_lm_logits(hidden, embedding.word_embeddings.weight, embedding.tp)


class TransformerBlockPipe(BloomBlock):
    """A BLOOM block whose linears hold this TP rank's shard; built on ``meta``, then materialized."""

    def __init__(self, cfg: RunConfig, tp: TPGroup, layer_number: int):
        with torch.device("meta"):
            super().__init__(cfg.model)
            parallelize_block(self, tp)
        self.to_empty(device="cpu")
        mark_parallel_parameters(self)  # to_empty made new Parameter objects, without the TP tags
        self.self_attention.alibi_slopes = local_alibi_slopes(cfg.model.num_attention_heads, tp)
        _initialize(self, cfg, tp, layout.FIRST_BLOCK_LAYER + layer_number)


class FinalLayerNormPipe(nn.LayerNorm):
    """``ln_f``: a bare LayerNorm, so its files are keyed ``weight`` / ``bias`` as Megatron's are."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg.model.hidden_size, eps=cfg.model.layernorm_epsilon)  # BLOOM's init: 1 and 0


def num_pipeline_layers(cfg: RunConfig) -> int:
    return layout.num_pipeline_layers(cfg.model.num_layers)


def layer_specs(cfg: RunConfig, tp: TPGroup) -> list:
    """The pipeline's layer list, in :mod:`trainer.layout`'s numbering."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    weight = layout.TIED_WEIGHT
    return [
        _no_op,
        TiedLayerSpec(TIED_KEY, EmbeddingPipe, cfg, tp, tied_weight_attr=weight),
        _no_op,
        *[LayerSpec(TransformerBlockPipe, cfg, tp, i) for i in range(cfg.model.num_layers)],
        _no_op,
        LayerSpec(FinalLayerNormPipe, cfg),
        TiedLayerSpec(TIED_KEY, EmbeddingPipe, cfg, tp, forward_fn=lm_head_forward, tied_weight_attr=weight),
    ]


def build_pipeline_module(cfg: RunConfig, topology, tp: TPGroup):
    """This rank's stage of BLOOM, as a DeepSpeed PipelineModule over the given topology."""
    from deepspeed.pipe import PipelineModule

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return mean_vocab_parallel_cross_entropy(logits, labels, tp)

    # DeepSpeed broadcasts the tied embedding between its stages while building (and loading); under
    # autograd that in-place c10d op would leave a backward node on the weight.
    with torch.no_grad():
        return PipelineModule(
            layers=layer_specs(cfg, tp),
            topology=topology,
            loss_fn=loss_fn,
            partition_method=cfg.parallel.partition_method,
            activation_checkpoint_interval=1 if cfg.parallel.activation_checkpointing else 0,
            checkpointable_layers=["TransformerBlockPipe"],
        )


@torch.no_grad()
def load_global_weights(pipe, cfg: RunConfig, tp: TPGroup, get_tensor: Callable[[str], torch.Tensor]) -> int:
    """Copy full (unsharded, HF-named) tensors into this rank's layers, slicing each for its TP rank.

    ``get_tensor(name)`` returns the full tensor of a global name (e.g. from a safetensors file, lazily).
    The word embedding may have fewer rows than our padded vocabulary: the extra rows are zero. Returns the
    number of tensors copied.
    """
    copied = 0
    seen: set[int] = set()
    for local_index, layer in enumerate(pipe.forward_funcs):
        module = layer.args[0] if isinstance(layer, functools.partial) else layer  # the tied LM head
        if not isinstance(module, nn.Module) or id(module) in seen:
            continue
        seen.add(id(module))
        # the tied LM head (last stage) is the embedding module again: its names are layer 1's
        index = layout.EMBEDDING_LAYER if isinstance(module, EmbeddingPipe) else pipe._local_start + local_index
        for local_name, param in module.named_parameters():
            name = layout.hf_name(cfg.model.num_layers, index, local_name)
            full = get_tensor(name)
            if name == "word_embeddings.weight" and full.size(0) < cfg.padded_vocab_size:
                pad = full.new_zeros(cfg.padded_vocab_size - full.size(0), full.size(1))
                full = torch.cat([full, pad])
            part = shard(name, full, tp.rank, tp.size)
            if part.shape != param.shape:
                raise ValueError(f"{name}: the checkpoint has shape {tuple(full.shape)}, which does not fit "
                                 f"this model's {tuple(param.shape)} at TP {tp.size}")
            param.copy_(part.to(param.dtype))
            copied += 1
    return copied
