"""BLOOM, architecture only: what BigScience trained with Megatron-DeepSpeed and shipped as
``transformers.BloomForCausalLM``.

    word embeddings -> embedding LayerNorm -> N x [pre-LN self-attention (fused QKV, ALiBi) + pre-LN GeLU MLP]
    -> final LayerNorm -> LM head tied to the word embeddings

Module and parameter names are the Hugging Face ones (``word_embeddings``, ``h.3.self_attention.query_key_value``,
``ln_f``...), so a HF checkpoint maps onto this model one name to one name. There is no ``torch.distributed`` in
this file: tensor and pipeline parallelism are applied from outside by ``trainer.parallel`` and
``trainer.pipeline``, which swap the linears for parallel ones. The code below therefore infers the local head
count from tensor shapes, and takes the ALiBi slopes from a buffer the TP plan may slice.

Run the reference comparison with ``pytest tests/unit/test_model_vs_hf.py``.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """BLOOM's per-head ALiBi slopes (Press et al. 2022), also for head counts that are not a power of two.

    For 2^k heads the slopes are the geometric sequence 2^(-8/2^k * i), i = 1..2^k. Otherwise the first
    2^floor(log2 n) heads use that sequence and the rest take every other slope of the sequence for twice as
    many heads (the odd powers), exactly as ``transformers`` and Megatron-DeepSpeed compute them.
    """
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = torch.pow(torch.tensor(base, dtype=torch.float32), torch.arange(1, closest + 1, dtype=torch.int32))
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, num_heads - closest)
        extra = torch.pow(torch.tensor(extra_base, dtype=torch.float32),
                          torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))
        slopes = torch.cat([slopes, extra])
    return slopes  # (nh,)


class BloomAttention(nn.Module):
    """Causal self-attention with a fused QKV projection and the ALiBi position bias.

    The fused projection lays heads out as (nh, 3, hs) along its output, so splitting it into contiguous
    blocks keeps whole heads together: that is what makes the column-parallel split of BLOOM exact.
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0):
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.query_key_value = nn.Linear(hidden_size, 3 * hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(attention_dropout)
        # One slope per head of *this* module; the TP plan keeps only the local heads' slopes. A plain fp32
        # attribute, not a buffer: casting the model to bf16 must not round the slopes.
        self.alibi_slopes = alibi_slopes(num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.query_key_value(x).view(B, T, -1, 3, self.head_dim)  # (B, T, nh, 3, hs), nh local
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))  # (B, nh, T, hs)
        nh = q.size(1)
        # ALiBi as BLOOM implements it: a bias slope_h * j on key position j. Softmax is invariant to the
        # per-row constant slope_h * i, so this equals the paper's -slope_h * (i - j) on causal rows.
        positions = torch.arange(T, device=x.device, dtype=torch.float32)
        slopes = self.alibi_slopes.to(device=x.device, dtype=torch.float32)
        bias = (slopes[:, None] * positions[None, :]).to(q.dtype)  # (nh, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T), True above the diagonal
        mask = bias[:, None, :].masked_fill(causal, torch.finfo(q.dtype).min)  # (nh, T, T)
        # One fused kernel (memory-efficient attention on GPUs): the (B, nh, T, T) scores and probabilities
        # are never stored for backward, which at seq 2048 is most of the activation memory.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[None],
            dropout_p=self.attention_dropout.p if self.training else 0.0,
            scale=1.0 / math.sqrt(self.head_dim),
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * self.head_dim)  # (B, T, nh*hs)
        return self.dense(y)  # (B, T, C)


class BloomMLP(nn.Module):
    """h -> 4h -> GeLU (tanh approximation, BLOOM's ``bloom_gelu``) -> h."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden_size, 4 * hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))  # (B, T, C)


class BloomBlock(nn.Module):
    """One pre-LN transformer block; the residual is taken before each LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.self_attention = BloomAttention(config.hidden_size, config.num_attention_heads,
                                             config.attention_dropout)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = BloomMLP(config.hidden_size)
        self.hidden_dropout = config.hidden_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.hidden_dropout if self.training else 0.0
        x = x + F.dropout(self.self_attention(self.input_layernorm(x)), p)  # (B, T, C)
        x = x + F.dropout(self.mlp(self.post_attention_layernorm(x)), p)  # (B, T, C)
        return x


class BloomForCausalLM(nn.Module):
    """The whole model on one device: token ids (B, T) -> logits (B, T, padded vocab).

    The parallel trainer does not use this class; it builds the same sub-modules stage by stage
    (``trainer.pipeline``). It is the single-device twin used to compare with ``transformers`` and in
    benchmarks.
    """

    def __init__(self, config: ModelConfig, padded_vocab_size: int | None = None):
        super().__init__()
        self.config = config
        vocab = padded_vocab_size or config.padded_vocab_size(1)
        self.word_embeddings = nn.Embedding(vocab, config.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.h = nn.ModuleList(BloomBlock(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings_layernorm(self.word_embeddings(input_ids))  # (B, T, C)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        return F.linear(x, self.word_embeddings.weight)  # tied LM head: (B, T, V)


# ------------------------------------------------------------------------------------------ initialization

# Output projections into the residual stream get Megatron's scaled init std / sqrt(2 * num_layers), as in
# the Megatron-DeepSpeed code BLOOM was trained with.
_OUTPUT_PROJECTIONS = ("self_attention.dense.weight", "mlp.dense_4h_to_h.weight")


def init_std_for(name: str, config: ModelConfig) -> float | None:
    """The normal-init std of a parameter by its (HF) name, or None for LayerNorm/bias (1 and 0)."""
    if "layernorm" in name or name.startswith("ln_f") or ".ln_f." in name or name.endswith(".bias"):
        return None
    std = config.resolved_init_std
    if name.endswith(_OUTPUT_PROJECTIONS):
        std /= math.sqrt(2.0 * config.num_layers)
    return std


def parameter_seed(seed: int, name: str, shard: int = 0) -> int:
    """A stable seed per (run seed, global parameter name, TP shard): the same weights whatever the PP/DP
    layout, because each parameter draws from its own generator."""
    return (seed * 1_000_003 + zlib.crc32(f"{name}#{shard}".encode())) % (2 ** 63)


@torch.no_grad()
def init_parameters(module: nn.Module, config: ModelConfig, seed: int, prefix: str = "", shard: int = 0,
                    sharded_names: frozenset[str] | set[str] = frozenset(),
                    name_of: Callable[[str], str] | None = None) -> None:
    """BLOOM's init in place: normal(0, std) weights, zero biases, LayerNorm weight 1 / bias 0.

    ``prefix`` turns a local parameter name into its global HF name (``h.3.``), or ``name_of`` does where a
    prefix is not enough (a pipeline layer's Megatron-named keys, ``trainer.layout``); parameters listed in
    ``sharded_names`` (local names of TP-split tensors) draw from a per-shard generator, the others from the
    same generator on every TP rank, so TP-duplicated tensors start identical.
    """
    for local_name, param in module.named_parameters():
        name = name_of(local_name) if name_of is not None else prefix + local_name
        std = init_std_for(name, config)
        if std is None:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
            continue
        gen = torch.Generator().manual_seed(parameter_seed(seed, name, shard if local_name in sharded_names else 0))
        param.copy_(torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))
