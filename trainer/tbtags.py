"""TensorBoard scalars under Megatron-DeepSpeed's tag names, so BLOOM's published TensorBoard logs and a bigops
run overlay tag for tag (in TensorBoard itself, or with ``bigops plot --compare``).

The names and their x axes are those of bigscience-workshop/Megatron-DeepSpeed ``megatron/training.py``
(``training_log`` and ``evaluate_and_print_results``), which wrote BLOOM-176B's logs:

- ``<group>/<name>`` is stepped by the iteration (our optimizer step);
- ``<group>/<name> vs samples`` by the consumed samples, ``... vs tokens`` by the consumed tokens
  (samples x sequence length), so runs with another batch size line up by data seen.

Megatron has no per-step "skipped" scalar (it prints the count per log interval): ``skipped/skipped`` is ours,
1 for a step whose update was skipped (NaN/Inf), 0 otherwise. ``iteration-time/tokens per second`` is the name
microsoft/Megatron-DeepSpeed later gave the rate.

A pure table from one metrics record (``trainer.train.train_step``) to ``(tag, value, step)`` triples: the
writer (``trainer.telemetry.MetricsSink``) adds them, the reader (``bigops.plot``) looks for the same names.
"""

from __future__ import annotations

import math

LOSS = "lm-loss-training/lm loss"
VAL_LOSS = "lm-loss-validation/lm loss validation"
VAL_PPL = "lm-loss-validation/lm loss validation ppl"
GRAD_NORM = "grad-norm/grad-norm"
LR = "learning-rate/learning-rate"
BATCH_SIZE = "batch-size/batch-size"
ITERATION_TIME = "iteration-time/iteration-time"
TOKENS_PER_SECOND = "iteration-time/tokens per second"
SKIPPED = "skipped/skipped"
STEPS_VS_SAMPLES = ("steps-vs-samples/y=steps,x=samples", "steps-vs-samples/y=samples,x=steps")
STEPS_VS_TOKENS = ("steps-vs-tokens/y=steps,x=tokens", "steps-vs-tokens/y=tokens,x=steps")

VS_SAMPLES, VS_TOKENS = " vs samples", " vs tokens"

TRAINING = (
    # (record key, tag, its "vs" variants): which x axes Megatron-DeepSpeed gave each one
    ("loss", LOSS, (VS_SAMPLES, VS_TOKENS)),
    ("grad_norm", GRAD_NORM, (VS_SAMPLES, VS_TOKENS)),
    ("lr", LR, (VS_SAMPLES, VS_TOKENS)),
    ("batch_size", BATCH_SIZE, (VS_SAMPLES,)),
    ("step_seconds", ITERATION_TIME, (VS_SAMPLES, VS_TOKENS)),
    ("tokens_per_second", TOKENS_PER_SECOND, ()),
    ("skipped", SKIPPED, (VS_SAMPLES,)),
)

PPL_CAP = 20.0
"""Megatron prints and logs ``exp(min(20, loss))``: a diverged loss does not overflow the perplexity."""


def scalars(record: dict, seq_length: int, batch_size: int) -> list[tuple[str, float, int]]:
    """The ``(tag, value, step)`` triples of one metrics record: the step's training scalars, and the validation
    loss when the record has one. ``batch_size``: the global batch of the step (unless the record names it)."""
    step, samples = int(record["step"]), int(record["consumed_samples"])
    axes = {"": step, VS_SAMPLES: samples, VS_TOKENS: samples * seq_length}
    values = {**record, "batch_size": record.get("batch_size", batch_size), "skipped": int(bool(record.get("skipped")))}
    out = [(STEPS_VS_SAMPLES[0], step, samples), (STEPS_VS_SAMPLES[1], samples, step),
           (STEPS_VS_TOKENS[0], step, axes[VS_TOKENS]), (STEPS_VS_TOKENS[1], axes[VS_TOKENS], step)]
    for key, tag, variants in TRAINING:
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # no grad norm (DeepSpeed gave none): Megatron leaves the tag out too
        out.extend((tag + variant, float(value), axes[variant]) for variant in ("", *variants))
    val = record.get("val_loss")
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        ppl = math.exp(min(PPL_CAP, val)) if not math.isnan(val) else math.nan
        for variant in ("", VS_SAMPLES, VS_TOKENS):
            out.append((VAL_LOSS + variant, float(val), axes[variant]))
            out.append((VAL_PPL + variant, ppl, axes[variant]))
    return out
