"""``bigops ckpt export-hf``: any bigops checkpoint (any TP/PP/DP) -> a Hugging Face BLOOM directory that
``AutoTokenizer``, ``AutoModelForCausalLM`` and ``pipeline("text-generation", model=DIR)`` load as is.

This is how BigScience shipped BLOOM: the Megatron-DeepSpeed shards merged into ``BloomForCausalLM``
weights, with the run's tokenizer (``RUN/data/tokenizer.json``) as HF tokenizer files and the special
token ids in ``config.json`` and ``generation_config.json`` (trainer/hf_tokenizer.py). Memory use is one
pipeline layer (all TP shards of it) plus one output shard at a time. The directory appears whole or not
at all (trainer/hf.py ``write_hf_directory``), its files readable as the umask allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bigops.checkpoint.layout import iter_full_tensors, open_checkpoint
from bigops.errors import InputError, OutputExistsError
from trainer.hf import BLOOM_TOKEN_IDS, hf_config_dict, write_hf_directory
from trainer.hf_tokenizer import (ROLE_NAMES, SpecialTokens, TokenizerExportError, special_tokens_of,
                                  write_generation_config, write_hf_tokenizer)
from trainer.rundir import RunDir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    tag: str
    step: int | None
    files: list[Path]
    num_parameters: int
    special_tokens: SpecialTokens | None
    """The exported tokenizer's roles; None when the run has no tokenizer (weights only)."""
    warnings: list[str] = field(default_factory=list)


def export_hf(run_dir: str | Path, out_dir: str | Path, tag: str | None = None,
              dtype: str = "auto", max_shard_bytes: int = 5 * 1024 ** 3,
              progress: Callable[[str], None] = lambda text: None) -> ExportResult:
    """Merge the checkpoint's shards and write ``config.json``, safetensors, the tokenizer files and
    ``generation_config.json`` into a new ``out_dir``; ``progress(text)`` after each pipeline layer."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputExistsError(f"{out_dir} already exists: export-hf writes a new directory and never "
                                f"overwrites one")
    ckpt = open_checkpoint(run_dir, tag)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if ckpt.config.train.precision == "bf16" else torch.float32
    else:
        torch_dtype = DTYPES[dtype]
    tokenizer_file = RunDir(Path(run_dir)).tokenizer
    special, warnings = _special_tokens(tokenizer_file)

    count = written = 0

    def counted():
        nonlocal count, written
        for name, tensor in iter_full_tensors(ckpt, dtype=torch_dtype, on_layer=report_layer):
            count += tensor.numel()
            written += tensor.numel() * tensor.element_size()
            yield name, tensor

    def report_layer(done: int, total: int) -> None:
        progress(f"layer {done}/{total}, {written / 1e6:,.1f} MB")

    token_ids = _token_ids(special)

    def tokenizer_files(folder: Path) -> None:
        if special is not None:
            write_hf_tokenizer(tokenizer_file, folder)
        write_generation_config(folder, token_ids)

    # The padded vocabulary is exported as is, like BLOOM's 250880 rows for a 250680-token tokenizer.
    config = hf_config_dict(ckpt.config.model, vocab_size=ckpt.config.padded_vocab_size, dtype=torch_dtype,
                            token_ids=token_ids)
    files = write_hf_directory(out_dir, config, counted(), max_shard_bytes=max_shard_bytes, extra=tokenizer_files)
    return ExportResult(out_dir=out_dir, tag=ckpt.tag, step=ckpt.step, files=files, num_parameters=count,
                        special_tokens=special, warnings=warnings)


def _token_ids(special: SpecialTokens | None) -> dict[str, int | None]:
    """config.json's and generation_config.json's BOS/EOS/PAD ids: the tokenizer's; BLOOM's without a
    tokenizer (the weights may be paired with BLOOM's); none at all for a tokenizer without an EOS (an id
    that means nothing would stop generation at a random token)."""
    if special is None:
        return dict(BLOOM_TOKEN_IDS)
    if special.eos is None:
        return dict.fromkeys(BLOOM_TOKEN_IDS)
    return special.config_ids()


def _special_tokens(tokenizer_file: Path) -> tuple[SpecialTokens | None, list[str]]:
    """The run tokenizer's roles (None without a tokenizer), and what the user should know about them."""
    if not tokenizer_file.is_file():
        return None, [f"the run has no tokenizer ({tokenizer_file} is missing: synthetic data, or indexed data "
                      f"without data.tokenizer): the export holds the weights only, AutoTokenizer and pipeline() "
                      f"need a tokenizer copied in"]
    try:
        special = special_tokens_of(tokenizer_file)
    except TokenizerExportError as exc:
        raise InputError(str(exc)) from None
    if special.eos is None:
        return special, [f"{tokenizer_file} has none of {', '.join(ROLE_NAMES['eos'])}: the tokenizer is exported "
                         f"without BOS/EOS/PAD/UNK (generation stops at its length limit only; batches need a "
                         f"pad token set by hand)"]
    return special, []
