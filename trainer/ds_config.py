"""The DeepSpeed config of a run, as a pure function of the run config, plus the LR schedule."""

from __future__ import annotations

import math
from typing import Any

from trainer.config import RunConfig, gradient_accumulation_steps
from trainer.data.schedule import samples_before_step


def deepspeed_config(cfg: RunConfig, load_universal: bool = False) -> dict[str, Any]:
    """DeepSpeed's JSON config. AdamW is torch's (``torch_adam``): DeepSpeed's fused Adam would be
    JIT-compiled on CPU. bf16 keeps fp32 master weights and fp32 gradient accumulation (BLOOM's setting).
    ``load_universal``: the checkpoint to resume from is a universal one (``bigops ckpt reshape``); DeepSpeed
    then loads it with its universal loading (saves are unaffected: ordinary checkpoints of this layout)."""
    t, p = cfg.train, cfg.parallel
    if t.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision={t.precision!r} must be resolved to fp32 or bf16 first")
    bf16 = t.precision == "bf16"
    config: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg),
        "gradient_clipping": t.clip_grad,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": [t.adam_beta1, t.adam_beta2], "eps": t.adam_eps,
                       "weight_decay": t.weight_decay, "torch_adam": True},
        },
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    if bf16:
        # ZeRO-1: DeepSpeed's BF16_Optimizer with fp32 gradient accumulation (BLOOM's setting). ZeRO-0 in bf16:
        # DeepSpeed takes the same optimizer only with bf16 accumulation (fp32 is refused for stage 0).
        config["data_types"] = {"grad_accum_dtype": "fp32" if p.zero_stage >= 1 else "bf16"}
    return config


def lr_at(cfg: RunConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then decay to ``min_lr``; in samples
    when ``train.lr_decay_samples`` is set (:func:`lr_at_samples`), else in steps."""
    t = cfg.train
    if t.lr_decay_samples is not None:
        return lr_at_samples(cfg, samples_before_step(step, t.global_batch_size, t.rampup_batch_size))
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_decay_style == "constant":
        return t.lr
    span = max(1, (t.lr_decay_steps or t.train_steps) - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)  # past the decay span: min_lr
    if t.lr_decay_style == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return t.min_lr + (t.lr - t.min_lr) * factor


def lr_at_samples(cfg: RunConfig, samples: int) -> float:
    """The learning rate after ``samples`` trained samples, as Megatron-DeepSpeed's ``AnnealingLR.get_lr`` in its
    sample-based mode (``--lr-warmup-samples``, ``--lr-decay-samples``), which BLOOM-176B trained with: linear
    from 0 up to and including the warm-up's last sample, then the decay style down to ``min_lr`` at
    ``lr_decay_samples``, ``min_lr`` past it."""
    t = cfg.train
    warmup, decay = t.lr_warmup_samples, t.lr_decay_samples
    if warmup > 0 and samples <= warmup:
        return t.lr * float(samples) / float(warmup)
    if t.lr_decay_style == "constant":
        return t.lr
    if samples > decay:
        return t.min_lr
    ratio = float(samples - warmup) / float(decay - warmup)
    factor = 1.0 - ratio if t.lr_decay_style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return t.min_lr + factor * (t.lr - t.min_lr)
