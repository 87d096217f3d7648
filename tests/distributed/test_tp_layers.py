"""Each tensor-parallel piece at TP=2 (2 gloo ranks) against its unsharded twin: same output, and each
rank's parameter gradients equal its slice of the full gradients (nanotron-style sharded-vs-full tests)."""

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from launcher.local import free_port

pytestmark = pytest.mark.distributed

TP = 2


def _worker(rank: int, port: int, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=TP)
    try:
        from trainer.parallel.mappings import TPGroup
        tp = TPGroup(group=dist.new_group([0, 1]), rank=rank, size=TP, ranks=(0, 1))
        for check in (check_column_row_mlp, check_vocab_embedding_and_cross_entropy, check_block, check_desync):
            check(tp)
    except Exception:  # report to the parent: an assertion inside a spawned process
        errors.put(f"rank {rank}: {traceback.format_exc()}")
    finally:
        dist.destroy_process_group()


def _close(a, b, what):
    """Equal up to fp32 reordering: max |a - b| within 1e-5 of the tensor's scale (max |b|). Elementwise
    relative checks fail on elements that are sums with cancellation, where a few ulps of the summands
    are a large fraction of the result."""
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max |diff| {err:.3e} > 1e-5 x {scale:.3e}"


def check_column_row_mlp(tp):
    from trainer.parallel.layers import ColumnParallelLinear, RowParallelLinear
    from trainer.parallel.plan import shard
    gen = torch.Generator().manual_seed(0)
    a, b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
    for p in (*a.parameters(), *b.parameters()):
        p.data = torch.randn(p.shape, generator=gen)
    x = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    full = b(torch.relu(a(x)))
    full.square().sum().backward()

    col, row = ColumnParallelLinear(8, 16, tp), RowParallelLinear(16, 8, tp)
    with torch.no_grad():
        col.weight.copy_(shard("mlp.dense_h_to_4h.weight", a.weight, tp.rank, tp.size))
        col.bias.copy_(shard("mlp.dense_h_to_4h.bias", a.bias, tp.rank, tp.size))
        row.weight.copy_(shard("mlp.dense_4h_to_h.weight", b.weight, tp.rank, tp.size))
        row.bias.copy_(b.bias)
    x2 = x.detach().clone().requires_grad_(True)
    out = row(torch.relu(col(x2)))
    out.square().sum().backward()
    _close(out, full, "column->row output")
    _close(x2.grad, x.grad, "input gradient (copy_to all-reduce)")
    _close(col.weight.grad, shard("mlp.dense_h_to_4h.weight", a.weight.grad, tp.rank, tp.size), "column grad")
    _close(row.weight.grad, shard("mlp.dense_4h_to_h.weight", b.weight.grad, tp.rank, tp.size), "row grad")
    _close(row.bias.grad, b.bias.grad, "row bias grad")
    assert col.weight.tensor_model_parallel and row.weight.tensor_model_parallel
    assert not getattr(row.bias, "tensor_model_parallel", False)


def check_vocab_embedding_and_cross_entropy(tp):
    from trainer.parallel.cross_entropy import mean_vocab_parallel_cross_entropy
    from trainer.parallel.layers import VocabParallelEmbedding, parallel_lm_logits
    from trainer.parallel.plan import shard
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 8, generator=gen, requires_grad=True)
    ids = torch.randint(0, 32, (2, 6), generator=gen)
    labels = torch.randint(0, 32, (2, 6), generator=gen)
    h = torch.nn.functional.embedding(ids, weight)
    logits = torch.nn.functional.linear(torch.tanh(h), weight)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), labels.reshape(-1))
    loss.backward()

    emb = VocabParallelEmbedding(32, 8, tp)
    with torch.no_grad():
        emb.weight.copy_(shard("word_embeddings.weight", weight, tp.rank, tp.size))
    h2 = emb(ids)
    _close(h2, h, "vocab-parallel embedding output")
    local_logits = parallel_lm_logits(torch.tanh(h2), emb.weight, tp)
    assert local_logits.shape == (2, 6, 16)
    loss2 = mean_vocab_parallel_cross_entropy(local_logits, labels, tp)
    _close(loss2, loss, "vocab-parallel cross-entropy")
    loss2.backward()
    _close(emb.weight.grad, shard("word_embeddings.weight", weight.grad, tp.rank, tp.size), "tied embedding grad")


def check_block(tp):
    from trainer.config import ModelConfig
    from trainer.model.bloom import BloomBlock
    from trainer.parallel.plan import local_alibi_slopes, parallelize_block, shard
    cfg = ModelConfig(hidden_size=48, num_attention_heads=6, num_layers=1)
    torch.manual_seed(3)
    full = BloomBlock(cfg)
    with torch.no_grad():
        for p in full.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 7, 48, generator=torch.Generator().manual_seed(4))
    expected = full(x)
    expected.sum().backward()

    block = BloomBlock(cfg)
    parallelize_block(block, tp)
    block.self_attention.alibi_slopes = local_alibi_slopes(6, tp)
    full_params = dict(full.named_parameters())
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(shard(name, full_params[name], tp.rank, tp.size))
    got = block(x)
    _close(got, expected, "parallel block output (6 heads: 3 per rank, ALiBi slopes sliced)")
    got.sum().backward()
    for name, p in block.named_parameters():
        _close(p.grad, shard(name, full_params[name].grad, tp.rank, tp.size), f"block grad {name}")


def check_desync(tp):
    """tp_desync sees a drifted layer norm (and only TP-duplicated tensors count)."""
    from trainer.config import ModelConfig
    from trainer.model.bloom import BloomBlock
    from trainer.parallel.plan import parallelize_block
    from trainer.parallel.sanity import tp_desync
    block = parallelize_block(BloomBlock(ModelConfig(hidden_size=16, num_attention_heads=2)), tp)
    with torch.no_grad():
        for p in block.parameters():
            p.fill_(0.5)
        block.mlp.dense_h_to_4h.weight.fill_(float(tp.rank))  # sharded: differs by design, not counted
    assert tp_desync(block, tp) == 0.0
    with torch.no_grad():
        block.post_attention_layernorm.bias[3] += 0.25 * tp.rank  # BLOOM's bug: TP rank 1 drifts
    assert tp_desync(block, tp) == 0.25


def test_tp_layers_match_unsharded_twins():
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    mp.start_processes(_worker, args=(free_port(), errors), nprocs=TP, join=True, start_method="spawn")
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
