"""Megatron-DeepSpeed's BLOOM checkpoint layout, in one table: pipeline layer numbering, parameter names and
the metadata of the engine files, as its ``GPTModelPipe`` with ``--embed-layernorm`` (BigScience tr11) wrote
them. The trainer builds its pipeline from this table and every checkpoint tool reads checkpoints with it,
so DeepSpeed's universal-checkpoint tools, transformers' BLOOM conversion and BigScience's scripts read ours,
and ours read BLOOM's.

Pipeline layers (index = DeepSpeed's ``layer_XX`` in checkpoint file names; L = number of blocks)::

    0         a function (Megatron: fp16 cast)        no parameters, no file
    1         EmbeddingPipe (tied "embed")            word_embeddings.weight (vocab-parallel),
                                                      word_embeddings.norm.weight / .bias
    2         a function (Megatron: [b s h] -> [s b h]) no parameters, no file
    3..L+2    BLOOM blocks h.0 .. h.L-1               input_layernorm, self_attention.query_key_value,
                                                      self_attention.dense, post_attention_layernorm,
                                                      mlp.dense_h_to_4h, mlp.dense_4h_to_h (.weight / .bias)
    L+3       a function (Megatron: transpose back)   no parameters, no file
    L+4       the final LayerNorm                     weight, bias
    L+5       the tied "embed" as LM head             not saved: the same weights as layer 1

Hugging Face names (``trainer.model.bloom``, ``trainer.parallel.plan.SHARD_DIMS``) are what the rest of the code
speaks; :func:`hf_name` and :func:`locate` translate. Inside the pipeline module DeepSpeed names parameters
``<layer>.<key>`` and ``tied_modules.embed.<key>``: those are the names in the optimizer files, the ones
:func:`universal_checkpoint_info` declares the TP split of.
"""

from __future__ import annotations

import argparse
import re

EMBEDDING_LAYER = 1
FIRST_BLOCK_LAYER = 3
TIED_KEY = "embed"
"""DeepSpeed's tied-module key of the word embedding (``tied_modules.embed``)."""
TIED_WEIGHT = "word_embeddings.weight"
CHECKPOINT_VERSION = 3.0
"""Megatron's ``checkpoint_version``: 3.0 is the fused QKV laid out as (heads, 3, head_dim), which is ours."""

EMBEDDING_KEYS = {
    "word_embeddings.weight": "word_embeddings.weight",
    "word_embeddings.norm.weight": "word_embeddings_layernorm.weight",
    "word_embeddings.norm.bias": "word_embeddings_layernorm.bias",
}
"""Keys of layer 1's files -> HF names (transformers' convert_bloom_original_checkpoint_to_pytorch map)."""
FINAL_NORM_KEYS = {"weight": "ln_f.weight", "bias": "ln_f.bias"}
"""Keys of layer L+4's files -> HF names."""
BLOCK_KEYS = tuple(f"{module}.{p}" for module in (
    "input_layernorm", "self_attention.query_key_value", "self_attention.dense", "post_attention_layernorm",
    "mlp.dense_h_to_4h", "mlp.dense_4h_to_h") for p in ("weight", "bias"))
"""Keys of a block's files: HF's ``h.<i>.<key>``, Megatron's ParallelTransformerLayer names."""


def final_norm_layer(num_layers: int) -> int:
    return num_layers + 4


def num_pipeline_layers(num_layers: int) -> int:
    """Entries of the pipeline's layer list, functions and the tied LM head included."""
    return num_layers + 6


def saved_layers(num_layers: int) -> list[int]:
    """The layer indices that have ``layer_XX-model_YY-model_states.pt`` files, in order."""
    return [EMBEDDING_LAYER, *range(FIRST_BLOCK_LAYER, FIRST_BLOCK_LAYER + num_layers), final_norm_layer(num_layers)]


def block_of(num_layers: int, layer: int) -> int | None:
    """The block number of a pipeline layer index, None if it is not a block."""
    block = layer - FIRST_BLOCK_LAYER
    return block if 0 <= block < num_layers else None


def role(num_layers: int | None, layer: int) -> str:
    """What a pipeline layer holds, for people (``inspect``)."""
    if layer == EMBEDDING_LAYER:
        return "embedding"
    if num_layers is None:
        return "?"
    if (block := block_of(num_layers, layer)) is not None:
        return f"block {block}"
    return "final layernorm" if layer == final_norm_layer(num_layers) else "?"


def hf_name(num_layers: int, layer: int, key: str) -> str:
    """The HF name (without ``transformer.``) of ``key`` in layer ``layer``'s files; ValueError if the layout
    has no such parameter (a foreign or damaged checkpoint)."""
    if layer == EMBEDDING_LAYER and key in EMBEDDING_KEYS:
        return EMBEDDING_KEYS[key]
    if layer == final_norm_layer(num_layers) and key in FINAL_NORM_KEYS:
        return FINAL_NORM_KEYS[key]
    if (block := block_of(num_layers, layer)) is not None and key in BLOCK_KEYS:
        return f"h.{block}.{key}"
    raise ValueError(f"layer_{layer:02d} has no parameter {key!r} in Megatron-DeepSpeed's BLOOM layout "
                     f"({num_layers} blocks)")


def locate(num_layers: int, name: str) -> tuple[int, str]:
    """The inverse of :func:`hf_name`: (pipeline layer, key in its files) of a HF name."""
    for key, hf in EMBEDDING_KEYS.items():
        if name == hf:
            return EMBEDDING_LAYER, key
    for key, hf in FINAL_NORM_KEYS.items():
        if name == hf:
            return final_norm_layer(num_layers), key
    match = re.fullmatch(r"h\.(\d+)\.(.+)", name)
    if match and int(match.group(1)) < num_layers and match.group(2) in BLOCK_KEYS:
        return FIRST_BLOCK_LAYER + int(match.group(1)), match.group(2)
    raise ValueError(f"{name!r} is not a parameter of a {num_layers}-block BLOOM")


def pipe_param_name(layer: int, key: str) -> str:
    """The name DeepSpeed's PipelineModule gives the parameter ``key`` of layer ``layer`` (the optimizer files'
    and a universal checkpoint's name): ``tied_modules.embed.<key>`` for the embedding, else ``<layer>.<key>``."""
    return f"tied_modules.{TIED_KEY}.{key}" if layer == EMBEDDING_LAYER else f"{layer}.{key}"


# ------------------------------------------------------------------------------------- engine-file metadata

def universal_checkpoint_info(original_vocab_size: int, padded_vocab_size: int) -> dict:
    """What DeepSpeed's ``ds_to_universal`` needs to merge our TP slices, keyed as its constants say.

    Patterns are regular expressions on the pipeline module's parameter names (see the module docstring),
    derived from the one TP table (``trainer.parallel.plan.SHARD_DIMS``): TP-duplicated tensors are
    replicated (the converter checks the copies are equal, never averages), row-parallel ones are joined on
    dim 1, the rest on dim 0; the word embedding is vocabulary-parallel and padded to ``padded_vocab_size``
    rows (the converter strips the padding); the tied embedding module exists on the first and the last
    stage, and the first stage's copy is the one kept.
    """
    from deepspeed.checkpoint import constants as c

    from trainer.parallel.plan import shard_dim

    names = {rf"tied_modules\.{TIED_KEY}\.{re.escape(k)}$": hf for k, hf in EMBEDDING_KEYS.items()}
    names.update({rf"\d+\.{re.escape(k)}$": f"h.0.{k}" for k in BLOCK_KEYS})
    names.update({rf"\d+\.{re.escape(k)}$": hf for k, hf in FINAL_NORM_KEYS.items()})
    replicated = [p for p, hf in names.items() if shard_dim(hf) is None]
    row = [p for p, hf in names.items() if shard_dim(hf) == 1]
    return {
        c.UNIVERSAL_CHECKPOINT_VERSION_KEY: c.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        c.ORIGINAL_VOCAB_SIZE: original_vocab_size,
        c.PADDED_VOCAB_SIZE: padded_vocab_size,
        c.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
        c.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: row,
        c.VOCABULARY_PARAMETER_PATTERNS: [rf"tied_modules\.{TIED_KEY}\.{re.escape(TIED_WEIGHT)}$"],
        c.PIPELINE_REPLICATED_PARAMETER_PATTERNS: [rf"tied_modules\.{TIED_KEY}\."],
    }


def megatron_args(cfg, iteration: int, consumed_samples: int) -> argparse.Namespace:
    """The ``args`` Megatron-DeepSpeed pickles into its engine files (an ``argparse.Namespace``, as there),
    with its option names: what ``DeepSpeedCheckpoint.get_args()``, BigScience's conversion scripts and a
    universal-checkpoint load read. Only plain values: our loaders allow-list ``argparse.Namespace`` and
    nothing of ours."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    return argparse.Namespace(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=4 * m.hidden_size,
        num_attention_heads=m.num_attention_heads, kv_channels=m.hidden_size // m.num_attention_heads,
        seq_length=t.seq_length, max_position_embeddings=t.seq_length, position_embedding_type="alibi",
        embed_layernorm=True, apply_residual_connection_post_layernorm=False,
        layernorm_epsilon=m.layernorm_epsilon, hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout, init_method_std=m.resolved_init_std,
        make_vocab_size_divisible_by=m.make_vocab_size_divisible_by, padded_vocab_size=cfg.padded_vocab_size,
        tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp, data_parallel_size=p.dp,
        world_size=p.tp * p.pp * p.dp, zero_stage=p.zero_stage, pp_partition_method=p.partition_method,
        checkpoint_activations=p.activation_checkpointing, deepspeed=True,
        micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size, train_iters=t.train_steps,
        rampup_batch_size=[str(v) for v in t.rampup_batch_size] if t.rampup_batch_size else None,  # argparse's strs
        lr=t.lr, min_lr=t.min_lr, lr_decay_style=t.lr_decay_style, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        **_lr_schedule_args(t),
        adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, clip_grad=t.clip_grad,
        bf16=t.precision == "bf16", fp16=False, seed=t.seed,
        iteration=iteration, consumed_train_samples=consumed_samples, consumed_valid_samples=0,
    )


def _lr_schedule_args(t) -> dict:
    """The schedule's length as Megatron's args hold it: in iterations, or in samples (``--lr-decay-samples``)."""
    if t.lr_decay_samples is not None:
        return {"lr_warmup_iters": 0, "lr_decay_iters": None, "lr_warmup_samples": t.lr_warmup_samples,
                "lr_decay_samples": t.lr_decay_samples}
    return {"lr_warmup_iters": t.warmup_steps, "lr_decay_iters": t.lr_decay_steps}


def engine_metadata(cfg, iteration: int, consumed_samples: int) -> dict:
    """The Megatron-DeepSpeed keys of ``mp_rank_XX_model_states.pt`` (passed as DeepSpeed client state)."""
    from deepspeed.checkpoint import constants as c

    vocab = {c.ORIGINAL_VOCAB_SIZE: cfg.model.vocab_size, c.PADDED_VOCAB_SIZE: cfg.padded_vocab_size}
    return {
        "args": megatron_args(cfg, iteration, consumed_samples),
        "iteration": iteration,
        "checkpoint_version": CHECKPOINT_VERSION,
        "checkpoint_info": vocab,
        c.UNIVERSAL_CHECKPOINT_INFO: universal_checkpoint_info(cfg.model.vocab_size, cfg.padded_vocab_size),
    }


# ------------------------------------------------------------------------------ checkpoints of earlier bigops

LEGACY_FIRST_FILE = "layer_00-model_00-model_states.pt"
"""Earlier bigops versions wrote their own layout, the embedding at ``layer_00`` (here layer 0 is a function
and has no file)."""


def check_written_layout(directory) -> None:
    """Refuse, in one line naming the fix, a checkpoint written in earlier bigops versions' own layout
    (embedding at ``layer_00``, ``word_embeddings_layernorm`` and ``ln_f`` keys, ``tied_modules.word_embeddings``).

    A clear refusal rather than a migration: those checkpoints come from short runs of earlier versions,
    and their weights leave through ``bigops ckpt export-hf`` of that version and come back with ``--init-hf``
    (their optimizer state does not carry over)."""
    from pathlib import Path

    from trainer.checkpoint import CheckpointError

    if (Path(directory) / LEGACY_FIRST_FILE).exists():
        raise CheckpointError(f"{directory} is in the layout of bigops before Megatron-DeepSpeed's (it has "
                              f"{LEGACY_FIRST_FILE}): export it with that bigops version (`bigops ckpt export-hf`) "
                              f"and start a run from it with --init-hf")
