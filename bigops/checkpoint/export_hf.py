"""``bigops ckpt export-hf``: any bigops checkpoint (any TP/PP/DP) -> a Hugging Face BLOOM directory.

This is how BigScience shipped BLOOM: the Megatron-DeepSpeed shards merged into ``BloomForCausalLM``
weights. Memory use is one pipeline layer (all TP shards of it) plus one output shard at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bigops.checkpoint.layout import iter_full_tensors, open_checkpoint
from bigops.errors import OutputExistsError
from trainer.hf import hf_config_dict, write_hf_directory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    tag: str
    step: int | None
    files: list[Path]
    num_parameters: int


def export_hf(run_dir: str | Path, out_dir: str | Path, tag: str | None = None,
              dtype: str = "auto", max_shard_bytes: int = 5 * 1024 ** 3) -> ExportResult:
    """Merge the checkpoint's shards and write ``config.json`` + safetensors into a new ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputExistsError(f"{out_dir} already exists: export-hf writes a new directory and never "
                                f"overwrites one")
    ckpt = open_checkpoint(run_dir, tag)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if ckpt.config.train.precision == "bf16" else torch.float32
    else:
        torch_dtype = DTYPES[dtype]

    count = 0

    def counted():
        nonlocal count
        for name, tensor in iter_full_tensors(ckpt, dtype=torch_dtype):
            count += tensor.numel()
            yield name, tensor

    # The padded vocabulary is exported as is, like BLOOM's 250880 rows for a 250680-token tokenizer.
    config = hf_config_dict(ckpt.config.model, vocab_size=ckpt.config.padded_vocab_size, dtype=torch_dtype)
    files = write_hf_directory(out_dir, config, counted(), max_shard_bytes=max_shard_bytes)
    return ExportResult(out_dir=out_dir, tag=ckpt.tag, step=ckpt.step, files=files, num_parameters=count)
