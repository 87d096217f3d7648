"""The TP plan table, the pipeline layer layout and its HF names, without any process group."""

import pytest
import torch

from trainer import config as c
from trainer.parallel.mappings import TPGroup
from trainer.parallel.plan import is_tp_duplicated, merge, shard, shard_dim
from trainer import layout
from trainer.pipeline import EmbeddingPipe, TransformerBlockPipe, num_pipeline_layers


def test_shard_dims_follow_megatron():
    assert shard_dim("h.3.self_attention.query_key_value.weight") == 0
    assert shard_dim("h.3.self_attention.dense.weight") == 1
    assert shard_dim("h.0.mlp.dense_4h_to_h.weight") == 1
    assert shard_dim("word_embeddings.weight") == 0
    for dup in ("h.1.input_layernorm.weight", "h.1.self_attention.dense.bias", "h.1.mlp.dense_4h_to_h.bias",
                "word_embeddings_layernorm.bias", "ln_f.weight"):
        assert is_tp_duplicated(dup), dup


def test_shard_then_merge_is_identity():
    full = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(12, 6)
    for name in ("h.0.self_attention.query_key_value.weight", "h.0.mlp.dense_4h_to_h.weight", "ln_f.weight"):
        parts = [shard(name, full, r, 3) for r in range(3)]
        assert torch.equal(merge(name, parts), full)


def test_qkv_shards_keep_whole_heads():
    """QKV's output is laid out (heads, 3, head_dim): a contiguous split gives each rank whole heads."""
    heads, hs = 4, 2
    layout = torch.arange(heads).repeat_interleave(3 * hs)  # head id of each output row
    parts = [shard("self_attention.query_key_value.weight", layout[:, None], r, 2) for r in range(2)]
    assert parts[0].unique().tolist() == [0, 1] and parts[1].unique().tolist() == [2, 3]


def test_pipeline_layers_are_numbered_and_named_as_megatron_deepspeed_bloom():
    """GPTModelPipe with --embed-layernorm: embedding (with its norm inside) at 1, blocks from 3, the final
    norm at L+4 keyed weight/bias; transformers' BLOOM conversion maps these keys to the HF names."""
    cfg = c.preset("tiny")
    L = cfg.model.num_layers
    assert num_pipeline_layers(cfg) == L + 6
    assert layout.saved_layers(L) == [1, *range(3, 3 + L), L + 4]
    assert layout.hf_name(L, 1, "word_embeddings.norm.bias") == "word_embeddings_layernorm.bias"
    assert layout.hf_name(L, 3, "self_attention.dense.weight") == "h.0.self_attention.dense.weight"
    assert layout.hf_name(L, L + 2, "mlp.dense_4h_to_h.bias") == f"h.{L - 1}.mlp.dense_4h_to_h.bias"
    assert layout.hf_name(L, L + 4, "weight") == "ln_f.weight"
    for bad in ((0, "word_embeddings.weight"), (2, "weight"), (L + 3, "input_layernorm.weight"), (1, "weight")):
        with pytest.raises(ValueError):
            layout.hf_name(L, *bad)
    from trainer.model.bloom import BloomForCausalLM
    with torch.device("meta"):
        names = [n for n, _ in BloomForCausalLM(cfg.model).named_parameters()]
    assert all(layout.hf_name(L, *layout.locate(L, n)) == n for n in names)  # one table, both directions


def test_pipeline_modules_hold_megatron_keys():
    cfg = c.preset("tiny")
    emb = EmbeddingPipe(cfg, TPGroup.single())
    assert sorted(emb.state_dict()) == sorted(layout.EMBEDDING_KEYS)
    assert torch.all(emb.word_embeddings.norm.weight == 1) and torch.all(emb.word_embeddings.norm.bias == 0)
    ids = torch.tensor([[1, 2, 3]])
    expected = torch.nn.functional.layer_norm(emb.word_embeddings.weight[ids], (cfg.model.hidden_size,),
                                              eps=cfg.model.layernorm_epsilon)
    assert torch.allclose(emb(ids), expected)  # the norm is applied inside the embedding, as Megatron's
    from trainer.pipeline import FinalLayerNormPipe
    assert sorted(FinalLayerNormPipe(cfg).state_dict()) == ["bias", "weight"]


def test_pipe_layers_are_tagged_and_initialized_like_bloom():
    cfg = c.preset("tiny")
    block = TransformerBlockPipe(cfg, TPGroup.single(), layer_number=0)
    tagged = {n for n, p in block.named_parameters() if getattr(p, "tensor_model_parallel", False)}
    assert tagged == {"self_attention.query_key_value.weight", "self_attention.query_key_value.bias",
                      "self_attention.dense.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias",
                      "mlp.dense_4h_to_h.weight"}
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in block.parameters())
    assert torch.all(block.input_layernorm.weight == 1)
    # The same global name and seed give the same weights whatever builds them (PP/DP-independent init).
    again = TransformerBlockPipe(cfg, TPGroup.single(), layer_number=0)
    assert torch.equal(block.mlp.dense_h_to_4h.weight, again.mlp.dense_h_to_4h.weight)
    other = TransformerBlockPipe(cfg, TPGroup.single(), layer_number=1)
    assert not torch.equal(block.mlp.dense_h_to_4h.weight, other.mlp.dense_h_to_4h.weight)
    emb = EmbeddingPipe(cfg, TPGroup.single())
    assert emb.word_embeddings.weight.shape == (cfg.padded_vocab_size, 64)
    assert emb.word_embeddings.weight.tensor_model_parallel


def test_embeddings_count_as_layers_for_partitioning():
    """BLOOM's `type:transformer|embedding`: 70 blocks + 2 embedding occurrences = 72 weighted layers,
    6 per stage over PP 12."""
    import re

    from deepspeed.runtime.utils import partition_balanced

    from trainer.pipeline import layer_specs
    cfg = c.preset("bloom-176b")
    pattern = re.compile(cfg.parallel.partition_method.split(":")[1], re.IGNORECASE)
    specs = layer_specs(cfg, TPGroup.single())
    weights = [1 if hasattr(s, "typename") and pattern.search(s.typename.__name__) else 0 for s in specs]
    assert sum(weights) == 72 and len(specs) == num_pipeline_layers(cfg)
    parts = partition_balanced(weights=weights, num_parts=12)
    assert [sum(weights[a:b]) for a, b in zip(parts, parts[1:])] == [6] * 12


def test_process_group_backend_carries_cpu_tensors_on_gpus():
    from trainer.parallel.topology import backend
    assert backend(cuda_available=False) == "gloo"
    # On GPUs the control flags (CPU tensors) need gloo beside NCCL in the same group.
    assert backend(cuda_available=True) == "cpu:gloo,cuda:nccl"


def test_parallelize_block_applies_the_plan_table_on_meta():
    """Every block entry of TP_PLAN becomes its parallel linear with this rank's shard shape; nothing is
    allocated (the block stays on meta) and every parameter the table shards is split along SHARD_DIMS."""
    from trainer.model.bloom import BloomBlock
    from trainer.parallel.layers import ColumnParallelLinear, RowParallelLinear
    from trainer.parallel.plan import SHARD_DIMS, TP_PLAN, parallelize_block

    cfg = c.ModelConfig(hidden_size=16, num_attention_heads=4)
    with torch.device("meta"):
        full = BloomBlock(cfg)
        block = parallelize_block(BloomBlock(cfg), TPGroup(rank=1, size=2, ranks=(0, 1)))
    kinds = {name: type(block.get_submodule(name)) for name, style in TP_PLAN.items() if style != "vocab"}
    assert kinds == {"self_attention.query_key_value": ColumnParallelLinear, "self_attention.dense": RowParallelLinear,
                     "mlp.dense_h_to_4h": ColumnParallelLinear, "mlp.dense_4h_to_h": RowParallelLinear}
    full_shapes = dict((n, p.shape) for n, p in full.named_parameters())
    for name, p in block.named_parameters():
        assert p.device.type == "meta", name
        expected = list(full_shapes[name])
        if name in SHARD_DIMS:
            expected[SHARD_DIMS[name]] //= 2
        assert list(p.shape) == expected, name
    assert {n for n in full_shapes if n in SHARD_DIMS} == {
        "self_attention.query_key_value.weight", "self_attention.query_key_value.bias", "self_attention.dense.weight",
        "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight"}
