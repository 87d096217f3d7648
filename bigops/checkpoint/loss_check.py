"""The loss and logits on a fixed batch, computed from a checkpoint's full tensors one pipeline layer at a time: the
proof ``bigops ckpt reshape`` gives that a converted checkpoint holds the source's model.

Two readers feed one forward pass (:func:`streamed_loss`): the source's merged TP shards
(``trainer.megatron.full_tensor_reader``) and a universal checkpoint's ``zero/<param>/fp32.pt`` files
(:func:`universal_reader`), both as the target's ranks will hold them (:func:`as_loaded`): the run's
precision (a bf16 run's weights are the bf16 rounding of the fp32 masters, as DeepSpeed copies them) and the
target's padded vocabulary (rows beyond the kept ones are zero, as DeepSpeed's universal loading pads them).

The comparison is conversion fidelity: the source is fitted to the same rows as the target, so any
difference is the converter's. What a change of the padded vocabulary itself does to the loss (its padding
rows take part in the softmax) is reported beside it, never hidden.

Memory: the word embedding (needed again by the tied LM head) plus one block's tensors, plus the batch's
activations and logits: (B, T, padded vocab) floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bigops.errors import CheckpointError
from trainer import config as config_mod
from trainer import layout, safe_load

LOSS_RTOL = 1e-5
"""Relative tolerance of the converted checkpoint's loss against the source's (fp32 arithmetic on the same
values: only a wrong conversion moves it, by far more)."""
LOGIT_RTOL = 1e-5
"""And the largest logit difference, relative to the largest logit (at least 1): the loss on one batch averages
a small change away (one final-norm weight off by 1e-3 moves it by 3e-7), the logits show it."""
BATCH_SEED = 1234
BATCH_SIZE = 2
MAX_TOKENS = 64

EMBEDDING = layout.EMBEDDING_KEYS[layout.TIED_WEIGHT]
"""The word embedding's HF name: vocabulary-parallel, padded, and the tied LM head."""

Reader = Callable[[str], torch.Tensor]
"""HF name without ``transformer.`` (``h.3.mlp.dense_h_to_4h.weight``) -> the full tensor."""


@dataclass(frozen=True)
class LossCheck:
    source_loss: float
    """The source as it is (its own padded vocabulary)."""
    fitted_source_loss: float
    """The source fitted to the target's vocabulary rows: what the target is compared with."""
    target_loss: float
    max_logit_diff: float
    max_logit: float
    rows: tuple[int, int, int]
    """(source padded vocabulary, rows kept by the conversion, target padded vocabulary)."""
    tokens: int

    @property
    def relative_diff(self) -> float:
        return abs(self.target_loss - self.fitted_source_loss) / max(abs(self.fitted_source_loss), 1e-12)

    @property
    def ok(self) -> bool:
        return (math.isfinite(self.target_loss) and self.relative_diff <= LOSS_RTOL
                and self.max_logit_diff <= LOGIT_RTOL * max(1.0, self.max_logit))

    @property
    def vocabulary_effect(self) -> float:
        """Relative loss change that the padded vocabulary's change alone causes (0 when it stays)."""
        return abs(self.fitted_source_loss - self.source_loss) / max(abs(self.source_loss), 1e-12)

    def summary(self) -> str:
        text = (f"loss on a fixed batch of {self.tokens} tokens: source {self.fitted_source_loss:.6f}, converted "
                f"{self.target_loss:.6f} (relative difference {self.relative_diff:.1e}, tolerance {LOSS_RTOL:.0e}; "
                f"max |logit difference| {self.max_logit_diff:.1e} of max |logit| {self.max_logit:.2f}, tolerance "
                f"{LOGIT_RTOL:.0e} relative)")
        if self.rows[0] != self.rows[2]:
            text += (f"; the padded vocabulary goes from {self.rows[0]} to {self.rows[2]} rows, which alone moves "
                     f"the loss by {self.vocabulary_effect:.1e} relative (source as is: {self.source_loss:.6f})")
        return text

    def as_dict(self) -> dict:
        return {"source_loss": self.source_loss, "fitted_source_loss": self.fitted_source_loss,
                "target_loss": self.target_loss, "relative_diff": self.relative_diff, "tolerance": LOSS_RTOL,
                "max_logit_diff": self.max_logit_diff, "max_logit": self.max_logit, "rows": list(self.rows), "tokens": self.tokens}


def fixed_batch(cfg: config_mod.RunConfig) -> torch.Tensor:
    """(B, T + 1) token ids in the real vocabulary, the same for every call (its own generator)."""
    generator = torch.Generator().manual_seed(BATCH_SEED)
    tokens = min(cfg.train.seq_length, MAX_TOKENS)
    return torch.randint(0, cfg.model.vocab_size, (BATCH_SIZE, tokens + 1), generator=generator)


def as_loaded(get: Reader, precision: str, rows: int, keep_rows: int | None = None) -> Reader:
    """``get`` as a rank of the target holds the tensors: rounded to ``precision`` (then fp32 for the
    arithmetic), the word embedding cut to ``keep_rows`` and zero-padded to ``rows``."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def read(name: str) -> torch.Tensor:
        tensor = get(name)
        if low is not None:
            tensor = tensor.to(low)
        tensor = tensor.float()
        if name == EMBEDDING:
            kept = tensor[: min(keep_rows or rows, rows)]
            if kept.shape[0] < rows:
                kept = torch.cat([kept, kept.new_zeros(rows - kept.shape[0], *kept.shape[1:])])
            tensor = kept
        return tensor
    return read


@torch.no_grad()
def streamed_loss(get: Reader, cfg: config_mod.RunConfig, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mean next-token cross-entropy, logits (B, T, V)) of ``ids`` (B, T + 1), reading ``get`` layer by layer
    into one reused block: the same arithmetic as ``trainer.model.bloom.BloomForCausalLM``."""
    from trainer.model.bloom import BloomBlock

    m = cfg.model
    eps = m.layernorm_epsilon
    inputs, labels = ids[:, :-1], ids[:, 1:]  # (B, T) each
    embedding = get(EMBEDDING)  # (V, C): kept for the tied LM head
    x = F.embedding(inputs, embedding)  # (B, T, C)
    x = F.layer_norm(x, (m.hidden_size,), get("word_embeddings_layernorm.weight"),
                     get("word_embeddings_layernorm.bias"), eps)
    block = BloomBlock(m).eval()
    names = [name for name, _ in block.named_parameters()]
    for index in range(m.num_layers):
        block.load_state_dict({n: get(f"h.{index}.{n}") for n in names})
        x = block(x)  # (B, T, C)
    x = F.layer_norm(x, (m.hidden_size,), get("ln_f.weight"), get("ln_f.bias"), eps)
    logits = F.linear(x, embedding)  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return float(loss), logits


def universal_reader(directory: Path, num_layers: int) -> Reader:
    """HF name -> the fp32 tensor of a universal checkpoint (``zero/<pipeline name>/fp32.pt``), weights only."""

    def read(name: str) -> torch.Tensor:
        layer, key = layout.locate(num_layers, name)
        path = directory / "zero" / layout.pipe_param_name(layer, key) / "fp32.pt"
        state = safe_load.load(path, map_location="cpu")
        if not isinstance(state, dict) or not isinstance(state.get("param"), torch.Tensor):
            raise CheckpointError(f"{path} holds no 'param' tensor: not a universal checkpoint file")
        return state["param"]
    return read


def compare(source: Reader, target: Reader, source_cfg: config_mod.RunConfig,
            target_cfg: config_mod.RunConfig, keep_rows: int) -> LossCheck:
    """The source (as is, and fitted to the target's rows) and the target on :func:`fixed_batch`."""
    precision = target_cfg.train.precision
    source_rows, target_rows = source_cfg.padded_vocab_size, target_cfg.padded_vocab_size
    ids = fixed_batch(source_cfg)
    as_is, as_is_logits = streamed_loss(as_loaded(source, precision, source_rows), source_cfg, ids)
    fitted, fitted_logits = (as_is, as_is_logits) if keep_rows == source_rows == target_rows else \
        streamed_loss(as_loaded(source, precision, target_rows, keep_rows), source_cfg, ids)
    converted, target_logits = streamed_loss(as_loaded(target, precision, target_rows, keep_rows), target_cfg, ids)
    diff = float((target_logits - fitted_logits).abs().max()) if target_logits.shape == fitted_logits.shape \
        else math.inf
    return LossCheck(source_loss=as_is, fitted_source_loss=fitted, target_loss=converted, max_logit_diff=diff,
                     max_logit=float(fitted_logits.abs().max()),
                     rows=(source_rows, keep_rows, target_rows), tokens=int(ids[:, 1:].numel()))
