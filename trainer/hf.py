"""Interop with Hugging Face ``BloomForCausalLM`` checkpoints: read one as initial weights, write one.

Names: HF prefixes the body with ``transformer.`` and stores a tied ``lm_head.weight`` (or not); ours are the
same names without the prefix and without the head. Tensors are read lazily one at a time (safetensors
slices, or an mmap'ed ``pytorch_model.bin`` loaded with ``weights_only=True``), so importing a large model
needs memory for one tensor, not the checkpoint.

torch is imported only by the functions that move tensors: ``bigops.errors`` imports this module for
:class:`HFCheckpointError`, and the CLI (``bigops --help`` included) must start without paying for torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from trainer.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    import torch

HF_PREFIX = "transformer."
_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}
"""``config.json``'s ``torch_dtype`` for each training dtype, keyed by ``str(dtype)`` (no torch import)."""


class HFCheckpointError(ValueError):
    """A HF directory that is missing, partial or not a BLOOM model."""


def to_our_name(hf_name: str) -> str | None:
    """``transformer.h.0.ln.weight`` -> ``h.0.ln.weight``; the tied ``lm_head.weight`` -> None."""
    if hf_name == "lm_head.weight":
        return None
    return hf_name[len(HF_PREFIX):] if hf_name.startswith(HF_PREFIX) else hf_name


def to_hf_name(name: str) -> str:
    return HF_PREFIX + name


def read_hf_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HFCheckpointError(f"{directory} has no config.json: not a Hugging Face model directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HFCheckpointError(f"{path} cannot be read: {exc}") from None
    if data.get("model_type") != "bloom":
        raise HFCheckpointError(f"{path}: model_type is {data.get('model_type')!r}, not 'bloom'")
    return data


def model_config_from_hf(hf: dict, base: ModelConfig | None = None) -> ModelConfig:
    """Our model config for a HF BLOOM ``config.json``; the vocabulary is the HF (already padded) one."""
    base = base or ModelConfig()
    return ModelConfig(
        hidden_size=hf.get("hidden_size", hf.get("n_embed")),
        num_layers=hf.get("n_layer", hf.get("num_hidden_layers")),
        num_attention_heads=hf.get("n_head", hf.get("num_attention_heads")),
        vocab_size=hf["vocab_size"],
        make_vocab_size_divisible_by=base.make_vocab_size_divisible_by,
        layernorm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        hidden_dropout=base.hidden_dropout,
        attention_dropout=base.attention_dropout,
        init_std=hf.get("initializer_range", base.init_std),
    )


def check_compatible(model: ModelConfig, hf: dict, source: str = "the Hugging Face checkpoint") -> None:
    """Raise if the run's model shape differs from the checkpoint's (a HF ``config.json``, or
    ``trainer.megatron.hf_shape`` of a Megatron-DeepSpeed one), naming the option to change."""
    theirs = model_config_from_hf(hf)
    for option in ("hidden_size", "num_layers", "num_attention_heads"):
        if getattr(model, option) != getattr(theirs, option):
            raise ConfigError(f"model.{option}={getattr(model, option)} but {source} "
                              f"has {getattr(theirs, option)}: set model.{option}={getattr(theirs, option)}")
    if model.vocab_size < theirs.vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than {source}'s "
                          f"{theirs.vocab_size} embedding rows: set model.vocab_size={theirs.vocab_size}")


def open_hf_tensors(directory: str | Path) -> Callable[[str], torch.Tensor]:
    """A lazy reader: our parameter name -> full tensor from the HF directory (safetensors or .bin, sharded
    or not)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise HFCheckpointError(f"{directory} holds no *.safetensors or pytorch_model*.bin weights")
    where: dict[str, Path] = {}
    if files[0].suffix == ".safetensors":
        from safetensors import safe_open
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    if (ours := to_our_name(key)) is not None:
                        where[ours] = f

        def get(name: str) -> torch.Tensor:
            if name not in where:
                raise HFCheckpointError(f"{directory} has no tensor {to_hf_name(name)}: partial checkpoint?")
            with safe_open(str(where[name]), framework="pt") as handle:
                key = to_hf_name(name) if to_hf_name(name) in handle.keys() else name
                return handle.get_tensor(key)
        return get

    import torch

    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # a truncated or foreign file: one clear line
            raise HFCheckpointError(f"{f} cannot be loaded: {exc}") from None
        for key, tensor in state.items():
            if (ours := to_our_name(key)) is not None:
                loaded[ours] = tensor

    def get_bin(name: str) -> torch.Tensor:
        if name not in loaded:
            raise HFCheckpointError(f"{directory} has no tensor {to_hf_name(name)}: partial checkpoint?")
        return loaded[name]
    return get_bin


BLOOM_TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
"""BLOOM's (and bigops' own BPE's) special token ids: config.json's when the export has no tokenizer."""


def hf_config_dict(model: ModelConfig, vocab_size: int, dtype: torch.dtype,
                   token_ids: dict[str, int] | None = None) -> dict:
    """A ``config.json`` that ``transformers`` reads as this BLOOM model; ``token_ids`` (``bos_token_id``, ...)
    are the exported tokenizer's (default :data:`BLOOM_TOKEN_IDS`)."""
    return {
        "architectures": ["BloomForCausalLM"],
        "model_type": "bloom",
        "vocab_size": vocab_size,
        "hidden_size": model.hidden_size,
        "n_layer": model.num_layers,
        "n_head": model.num_attention_heads,
        "layer_norm_epsilon": model.layernorm_epsilon,
        "initializer_range": model.resolved_init_std,
        "hidden_dropout": model.hidden_dropout,
        "attention_dropout": model.attention_dropout,
        "apply_residual_connection_post_layernorm": False,
        "pretraining_tp": 1,
        "slow_but_exact": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        **BLOOM_TOKEN_IDS,
        **(token_ids or {}),
        "torch_dtype": _DTYPE_NAMES[str(dtype)],
        "dtype": _DTYPE_NAMES[str(dtype)],
    }


def write_hf_directory(out_dir: str | Path, config: dict, tensors: Iterable[tuple[str, torch.Tensor]],
                       max_shard_bytes: int = 5 * 1024 ** 3,
                       extra: Callable[[Path], None] | None = None) -> list[Path]:
    """Write ``config.json`` and safetensors shards (with an index when there are several) into a new
    directory, atomically: everything goes to a hidden ``.OUT.*.partial`` beside it, renamed when complete
    and removed on any failure. ``extra(folder)`` writes more files into it before the rename (the tokenizer,
    ``generation_config.json``).

    ``tensors`` yields (our name, full tensor) one at a time; at most one shard is held in memory.
    Refuses an ``out_dir`` that already exists (never overwrites). Every file is readable as the umask allows
    (0644 under umask 022), the way a model someone else will load must be, not 0600 as safetensors writes.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: choose a new output directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A fresh hidden temp dir beside the target: same filesystem for the final rename, and never a
    # directory someone else owns.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        files = _write_shards(tmp, out_dir, config, tensors, max_shard_bytes)
        if extra is not None:
            extra(tmp)
        _readable_and_durable(tmp, 0o666 & ~umask)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _write_shards(tmp: Path, out_dir: Path, config: dict, tensors: Iterable[tuple[str, torch.Tensor]],
                  max_shard_bytes: int) -> list[Path]:
    from safetensors.torch import save_file

    shard: dict[str, torch.Tensor] = {}
    written: list[tuple[str, list[str]]] = []  # (file name, tensor names): tensors are not kept
    total_bytes = 0

    def flush() -> None:
        if shard:
            name = f"model-{len(written) + 1:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            written.append((name, list(shard)))
            shard.clear()

    shard_bytes = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard_bytes and shard_bytes + nbytes > max_shard_bytes:
            flush()
            shard_bytes = 0
        shard[to_hf_name(name)] = tensor.contiguous()
        shard_bytes += nbytes
        total_bytes += nbytes
    flush()

    files, weight_map = [], {}
    for i, (name, keys) in enumerate(written):
        final = "model.safetensors" if len(written) == 1 else f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        os.replace(tmp / name, tmp / final)
        files.append(out_dir / final)
        weight_map.update({k: final for k in keys})
    if len(written) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return files


def _readable_and_durable(folder: Path, mode: int) -> None:
    """Give every file of ``folder`` ``mode`` and fsync it (before the rename that publishes them)."""
    for f in folder.iterdir():
        if not f.is_file():
            continue
        os.chmod(f, mode)
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
