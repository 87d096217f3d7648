"""An independent writer of a BLOOM checkpoint as BigScience's Megatron-DeepSpeed wrote one (tr11, BLOOM-176B).

Deliberately shares nothing with bigops' save code nor with ``trainer.layout``'s tables: every name below is
spelled here from Megatron-DeepSpeed's own source and DeepSpeed's checkpoint writer, so that a reader bug
and a writer bug cannot cancel out.

- ``GPTModelPipe`` (megatron/model/gpt_model.py) with ``--embed-layernorm`` and ALiBi builds the pipeline
  ``[fp16-cast fn, TiedLayerSpec('embed', EmbeddingPipe), transpose fn, ParallelTransformerLayerPipe x L,
  transpose fn, LayerSpec(LayerNorm), TiedLayerSpec('embed', forward_fn=_logits_helper)]``; DeepSpeed's
  ``PipelineModule.save_state_dict`` writes ``layer_{idx:02d}-model_{tp:02d}-model_states.pt`` for every entry
  with parameters except the tied LM head (a ``partial``): indices 1, 3..L+2 and L+4.
- ``VocabParallelEmbedding`` (megatron/mpu/layers.py) owns the embedding LayerNorm as ``self.norm``: keys
  ``word_embeddings.weight``, ``word_embeddings.norm.weight``, ``word_embeddings.norm.bias``.
- ``ParallelTransformerLayer`` (megatron/model/transformer.py): ``input_layernorm``,
  ``self_attention.query_key_value`` (ColumnParallel), ``self_attention.dense`` (RowParallel),
  ``post_attention_layernorm``, ``mlp.dense_h_to_4h`` (ColumnParallel), ``mlp.dense_4h_to_h`` (RowParallel).
  The fused QKV output is viewed as ``[s, b, np, 3 * hn]`` (checkpoint_version 3.0): per head, q then k then
  v; a TP rank owns a contiguous block of heads.
- megatron/checkpointing.py ``save_checkpoint``: client state ``args`` (argparse.Namespace),
  ``checkpoint_version`` 3.0, ``iteration``, ``tokens``, ``checkpoint_info`` (padded and original vocab),
  the RNG states (Python, NumPy, torch, CUDA, tracker); DeepSpeed's engine adds its own keys and writes
  ``mp_rank_{mp:02d}_model_states.pt`` (mp = stage x TP + tp rank), the BF16_Optimizer state at ZeRO-0
  ``bf16_zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt`` and ``latest``.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ORIGINAL_VOCAB = 250
"""The tokenizer's vocabulary; padded to 256 rows (make-vocab-size-divisible-by 64 x TP 2), as BLOOM's
250680 -> 250880."""


@dataclass(frozen=True)
class Shape:
    hidden: int = 32
    heads: int = 4
    layers: int = 2
    padded_vocab: int = 256
    tp: int = 2
    pp: int = 2
    iteration: int = 1000


def reference_model(shape: Shape, seed: int = 1234):
    """A random transformers BloomForCausalLM whose fp32 weights are exactly representable in bf16 (the
    checkpoint is bf16, so the model and the checkpoint then hold the same numbers)."""
    from transformers import BloomConfig, BloomForCausalLM
    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=shape.padded_vocab, hidden_size=shape.hidden, n_layer=shape.layers,
                         n_head=shape.heads, hidden_dropout=0.0, attention_dropout=0.0, initializer_range=0.05)
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # layer norms and biases differ from 1 / 0: a mix-up shows
            p.copy_(p.bfloat16().float())
    return model


# --------------------------------------------------------------------------------------- TP split (Megatron)

BLOCK_PARAMS = ("input_layernorm.weight", "input_layernorm.bias", "self_attention.query_key_value.weight",
                "self_attention.query_key_value.bias", "self_attention.dense.weight", "self_attention.dense.bias",
                "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
                "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias")


def _qkv_slice(full: torch.Tensor, heads: int, rank: int, tp: int) -> torch.Tensor:
    """Megatron's fused QKV (output rows viewed as [np, 3, hn]): the rows of TP rank ``rank``'s heads."""
    per_head = full.reshape(heads, 3, full.shape[0] // (3 * heads), *full.shape[1:])
    mine = per_head[rank * heads // tp:(rank + 1) * heads // tp]
    return mine.reshape(-1, *full.shape[1:]).clone()


def block_shard(key: str, full: torch.Tensor, heads: int, rank: int, tp: int) -> torch.Tensor:
    """One TP rank's part of a block parameter, as ColumnParallelLinear / RowParallelLinear hold it."""
    if key.startswith("self_attention.query_key_value."):
        return _qkv_slice(full, heads, rank, tp)
    if key.startswith("mlp.dense_h_to_4h."):  # column-parallel: output rows
        return full.chunk(tp, dim=0)[rank].clone()
    if key in ("self_attention.dense.weight", "mlp.dense_4h_to_h.weight"):  # row-parallel: input columns
        return full.chunk(tp, dim=1)[rank].clone()
    return full.clone()  # layer norms and row-parallel biases: every rank holds all of it


def layer_states(model, shape: Shape) -> dict[int, list[dict[str, torch.Tensor]]]:
    """pipeline layer index -> one bf16 state dict per TP rank (DeepSpeed's ``layer.state_dict()``)."""
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    tp, out = shape.tp, {}
    out[1] = [{"word_embeddings.weight": sd["word_embeddings.weight"].chunk(tp, dim=0)[r].clone(),
               "word_embeddings.norm.weight": sd["word_embeddings_layernorm.weight"].clone(),
               "word_embeddings.norm.bias": sd["word_embeddings_layernorm.bias"].clone()} for r in range(tp)]
    for block in range(shape.layers):
        out[3 + block] = [{k: block_shard(k, sd[f"h.{block}.{k}"], shape.heads, r, tp) for k in BLOCK_PARAMS}
                          for r in range(tp)]
    out[shape.layers + 4] = [{"weight": sd["ln_f.weight"].clone(), "bias": sd["ln_f.bias"].clone()}
                             for _ in range(tp)]
    return {i: [{k: v.to(torch.bfloat16).contiguous() for k, v in s.items()} for s in shards]
            for i, shards in out.items()}


def stage_layers(shape: Shape) -> list[list[int]]:
    """The saved layers of each pipeline stage (blocks spread evenly); the last stage also holds the tied
    embedding module (``tied_modules.embed``), as DeepSpeed builds tied layers on every stage that uses them."""
    blocks = list(range(3, 3 + shape.layers))
    per = -(-len(blocks) // shape.pp)
    stages = [blocks[s * per:(s + 1) * per] for s in range(shape.pp)]
    stages[0] = [1, *stages[0]]
    stages[-1] = [*stages[-1], shape.layers + 4]
    return stages


# --------------------------------------------------------------------------------------- engine files

def megatron_args(shape: Shape) -> argparse.Namespace:
    """What Megatron-DeepSpeed's ``parse_args`` leaves in ``args`` for tr11-style BLOOM (a subset; names
    as its arguments.py spells them)."""
    return argparse.Namespace(
        num_layers=shape.layers, hidden_size=shape.hidden, ffn_hidden_size=4 * shape.hidden,
        num_attention_heads=shape.heads, kv_channels=shape.hidden // shape.heads, seq_length=16,
        max_position_embeddings=16, position_embedding_type="alibi", embed_layernorm=True,
        layernorm_epsilon=1e-5, hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.0048,
        make_vocab_size_divisible_by=64, padded_vocab_size=shape.padded_vocab, pad_vocab_size_to=None,
        tensor_model_parallel_size=shape.tp, pipeline_model_parallel_size=shape.pp, world_size=shape.tp * shape.pp,
        data_parallel_size=1, micro_batch_size=1, global_batch_size=2, train_samples=None, lr=6e-5, min_lr=6e-6,
        lr_decay_style="cosine", lr_warmup_samples=216320, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
        adam_eps=1e-8, clip_grad=1.0, bf16=True, fp16=False, params_dtype=torch.bfloat16, seed=42,
        tokenizer_type="PretrainedFromHF", tokenizer_name_or_path="bigscience/tokenizer", deepspeed=True,
        zero_stage=0, pp_partition_method="type:transformer|embedding", iteration=shape.iteration,
        consumed_train_samples=shape.iteration * 2, consumed_valid_samples=0, rank=0,
    )


def engine_state(shape: Shape, stage: int, rank: int, param_names: list[list[str]], shapes) -> dict:
    """``mp_rank_XX_model_states.pt``: DeepSpeed's engine keys plus Megatron's client state."""
    py_state = random.getstate()
    return {
        "module": None, "buffer_names": [], "optimizer": None,
        "param_shapes": [{n: shapes[n] for n in group} for group in param_names],
        "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None,
        "lr_scheduler": {"max_lr": 6e-5, "warmup_steps": 216320, "num_steps": shape.iteration * 2,
                         "decay_style": "cosine", "decay_steps": 200_000_000, "min_lr": 6e-6},
        "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(),
        "skipped_steps": 3, "global_steps": shape.iteration, "global_samples": shape.iteration * 2,
        "dp_world_size": 1, "mp_world_size": shape.tp * shape.pp,
        "ds_config": {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 2, "gradient_clipping": 1.0,
                      "zero_optimization": {"stage": 0}, "bf16": {"enabled": True}, "steps_per_print": 2000},
        "ds_version": "0.7.4+bigscience",
        "args": megatron_args(shape), "checkpoint_version": 3.0, "iteration": shape.iteration,
        "tokens": shape.iteration * 2 * 16,
        "checkpoint_info": {"padded_vocab_size": shape.padded_vocab, "original_vocab_size": ORIGINAL_VOCAB},
        "random_rng_state": py_state, "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": torch.get_rng_state(),
        "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()},
    }


# --------------------------------------------------------------------------------------- BF16 optimizer

def _module_name(layer: int, key: str) -> str:
    """PipelineModule's parameter names: tied modules under ``tied_modules.<key>.``, the rest ``<idx>.``."""
    return f"tied_modules.embed.{key}" if layer == 1 else f"{layer}.{key}"


def param_groups(layers: list[int], states: dict, rank: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Megatron's ``_get_params_for_weight_decay_optimization``: [weight-decay params, no-decay params]
    (biases and every LayerNorm's parameters), in module order."""
    decay, no_decay = [], []
    for layer in layers:
        for key, value in states[layer][rank].items():
            norm = ".norm." in f".{key}" or "layernorm" in key or layer == max(states)
            (no_decay if norm or key.endswith("bias") else decay).append((_module_name(layer, key), value))
    return [decay, no_decay]


def optimizer_state(groups: list[list[tuple[str, torch.Tensor]]], fp32: dict[str, torch.Tensor],
                    step: int) -> dict:
    """DeepSpeed's ``BF16_Optimizer.state_dict()`` at DP 1: per group one flat fp32 partition (aligned to 2
    elements), Adam's moments of the same shape, and ``param_slice_mappings`` name -> fragment_address."""
    from deepspeed.utils.tensor_fragment import fragment_address

    flats, mappings, state = [], [], {}
    gen = torch.Generator().manual_seed(step)
    for g, group in enumerate(groups):
        parts, mapping, start = [], {}, 0
        for name, _ in group:
            value = fp32[name].flatten()
            mapping[name] = fragment_address(numel=value.numel(), start=start)
            parts.append(value)
            start += value.numel()
        if start % 2:
            parts.append(torch.zeros(1))
        flat = torch.cat(parts)
        flats.append(flat)
        mappings.append(mapping)
        state[g] = {"step": torch.tensor(float(step)), "exp_avg": torch.randn(flat.shape, generator=gen) * 1e-3,
                    "exp_avg_sq": torch.rand(flat.shape, generator=gen) * 1e-6}
    base = {"state": state, "param_groups": [
        {"lr": 5e-5, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": wd, "amsgrad": False, "params": [g]}
        for g, wd in enumerate((0.1, 0.0))]}
    return {"optimizer_state_dict": {"clip_grad": 1.0, "base_optimizer_state": base,
                                     "single_partition_of_fp32_groups": flats, "partition_count": 1,
                                     "ds_version": "0.7.4+bigscience", "param_slice_mappings": mappings},
            "ds_config": {"zero_optimization": {"stage": 0}, "bf16": {"enabled": True}},
            "ds_version": "0.7.4+bigscience"}


# --------------------------------------------------------------------------------------- the directory

def write_checkpoint(save_dir: Path, model, shape: Shape = Shape()) -> Path:
    """Write ``save_dir/global_step<iteration>/`` and ``save_dir/latest`` as Megatron-DeepSpeed does; returns
    the tag directory. fp32 masters are the model's weights (bf16-exact, see :func:`reference_model`)."""
    tag = f"global_step{shape.iteration}"
    out = Path(save_dir) / tag
    out.mkdir(parents=True)
    states = layer_states(model, shape)
    for layer, shards in states.items():
        for rank, sd in enumerate(shards):
            torch.save(sd, out / f"layer_{layer:02d}-model_{rank:02d}-model_states.pt")
    for stage, layers in enumerate(stage_layers(shape)):
        if stage == shape.pp - 1 and 1 not in layers:
            layers = [1, *layers]  # tied_modules.embed is a parameter of the last stage too
        for rank in range(shape.tp):
            groups = param_groups(layers, states, rank)
            fp32 = {n: v.float() for group in groups for n, v in group}
            mp = stage * shape.tp + rank
            names = [[n for n, _ in group] for group in groups]
            shapes = {n: v.shape for group in groups for n, v in group}
            torch.save(engine_state(shape, stage, rank, names, shapes), out / f"mp_rank_{mp:02d}_model_states.pt")
            torch.save(optimizer_state(groups, fp32, shape.iteration),
                       out / f"bf16_zero_pp_rank_0_mp_rank_{mp:02d}_optim_states.pt")
    (Path(save_dir) / "latest").write_text(tag)
    (Path(save_dir) / "latest_checkpointed_iteration.txt").write_text(str(shape.iteration))
    return out


def file_names(shape: Shape) -> list[str]:
    """The file names of a tag directory of ``shape`` (names only: BLOOM-176B's TP 4 x PP 12 is 70 blocks)."""
    layers = [1, *range(3, 3 + shape.layers), shape.layers + 4]
    names = [f"layer_{i:02d}-model_{r:02d}-model_states.pt" for i in layers for r in range(shape.tp)]
    for mp in range(shape.tp * shape.pp):
        names += [f"mp_rank_{mp:02d}_model_states.pt", f"bf16_zero_pp_rank_0_mp_rank_{mp:02d}_optim_states.pt"]
    return sorted(names)


def plant_desync(tag_dir: Path, layer: int = 3, key: str = "input_layernorm.weight", delta: float = 0.0625) -> None:
    """BLOOM-176B's bug: TP rank 1's copy of a layer norm drifts (its weights and its fp32 master)."""
    path = tag_dir / f"layer_{layer:02d}-model_01-model_states.pt"
    sd = torch.load(path, weights_only=True)
    sd[key] = (sd[key].float() + delta).to(sd[key].dtype)
    torch.save(sd, path)
    for optim in sorted(tag_dir.glob("bf16_zero_pp_rank_0_mp_rank_*_optim_states.pt")):
        mp = int(optim.name.split("mp_rank_")[1][:2])
        if mp % 2 != 1:
            continue
        osd = torch.load(optim, weights_only=False)
        for g, mapping in enumerate(osd["optimizer_state_dict"]["param_slice_mappings"]):
            address = mapping.get(f"{layer}.{key}")
            if address is not None:
                flat = osd["optimizer_state_dict"]["single_partition_of_fp32_groups"][g]
                flat.narrow(0, address.start, address.numel).add_(delta)
                torch.save(osd, optim)
