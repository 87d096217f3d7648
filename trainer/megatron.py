"""Reading a Megatron-DeepSpeed BLOOM checkpoint, ours or one Megatron-DeepSpeed wrote itself.

Both share the layout of ``trainer.layout``; what a checkpoint of BigScience's lacks is ours alone: the run
config in the engine files (``bigops`` client state) and ``manifest.json``. Here:

- :func:`run_config`: the run config of a tag directory, ours if it has one, else derived from Megatron's
  ``args`` and ``checkpoint_info`` in ``mp_rank_00_model_states.pt``;
- :func:`structural_problems`: the completeness check of a checkpoint without a manifest: every file the
  layout needs is there, and (``hashes``) every file's zip CRCs hold (torch files are zip archives with a
  CRC-32 per entry: a truncated or altered file fails it, as a changed sha256 fails our manifest);
- :func:`layer_tensors` / :func:`full_tensor_reader`: a pipeline layer's full tensors, merged over TP ranks,
  HF-named; the one reader behind ``export-hf``, ``--init-megatron`` and ``inspect``'s shapes.

Every file is loaded with ``trainer.safe_load`` (weights only, the named allow-list).
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from trainer import config as config_mod
from trainer import layout, safe_load
from trainer.checkpoint import MANIFEST, CheckpointError, check_tag, verify
from trainer.rundir import LATEST

if TYPE_CHECKING:  # torch only where tensors are read: `bigops status` reads this module's metadata
    import torch

ENGINE_FILE = "mp_rank_{mp:02d}_model_states.pt"
LAYER_FILE = "layer_{layer:02d}-model_{tp:02d}-model_states.pt"


def layer_file(directory: Path, layer: int, tp_rank: int) -> Path:
    return Path(directory) / LAYER_FILE.format(layer=layer, tp=tp_rank)


def read_engine(directory: Path) -> dict:
    """``mp_rank_00_model_states.pt`` (weights only, memory-mapped)."""
    state = safe_load.load(Path(directory) / ENGINE_FILE.format(mp=0), map_location="cpu", mmap=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory}: {ENGINE_FILE.format(mp=0)} is not a DeepSpeed engine file")
    return state


def written_by_bigops(engine: dict) -> bool:
    ours = engine.get("bigops")
    return isinstance(ours, dict) and isinstance(ours.get("config"), dict)


def run_config(engine: dict, where: Path) -> config_mod.RunConfig:
    """The run config of a checkpoint: ours (``bigops`` client state), else Megatron-DeepSpeed's ``args``."""
    if written_by_bigops(engine):
        try:
            return config_mod.from_dict(engine["bigops"]["config"])
        except config_mod.ConfigError as exc:
            raise CheckpointError(f"{where}: its run config is invalid: {exc}") from None
    args = engine.get("args")
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"{where} holds neither a bigops run config nor Megatron-DeepSpeed's args: not a "
                              f"BLOOM checkpoint of either")
    return config_from_args(args, engine, where)


def _arg(args: argparse.Namespace, name: str, where: Path, default=None, required: bool = False):
    value = getattr(args, name, default)
    if value is None and required:
        raise CheckpointError(f"{where}: Megatron's args lack {name}: cannot read the model's shape")
    return value if value is not None else default


def _rampup(args: argparse.Namespace, where: Path) -> list[int] | None:
    """``--rampup-batch-size``: argparse keeps its three values as the strings given (``'9_765_625'``)."""
    values = _arg(args, "rampup_batch_size", where)
    try:
        return [int(str(v)) for v in values] if values else None
    except ValueError:
        raise CheckpointError(f"{where}: Megatron's args hold rampup_batch_size={values!r}, not three "
                              f"integers") from None


def _lr_samples(args: argparse.Namespace, where: Path) -> dict:
    """A schedule in samples (``--lr-decay-samples``, BLOOM's) as ours; one in iterations is not read back."""
    decay = _arg(args, "lr_decay_samples", where)
    if decay is None:
        return {}
    return {"lr_decay_samples": int(decay), "lr_warmup_samples": int(_arg(args, "lr_warmup_samples", where, 0))}


def config_from_args(args: argparse.Namespace, engine: dict, where: Path) -> config_mod.RunConfig:
    """A run config for a checkpoint Megatron-DeepSpeed wrote: the model's shape, the layout and the
    optimization settings its ``args`` record (option names as Megatron's arguments.py spells them). The
    embedding keeps its padded rows exactly (``model.pad_vocab_size_to``); the tokenizer's vocabulary is
    ``checkpoint_info``'s original size when recorded."""
    if getattr(args, "embed_layernorm", True) is False or getattr(args, "position_embedding_type", "alibi") \
            not in ("alibi", None):
        raise CheckpointError(f"{where}: not a BLOOM checkpoint (it needs --embed-layernorm and ALiBi)")
    info = engine.get("checkpoint_info") if isinstance(engine.get("checkpoint_info"), dict) else {}
    padded = int(_arg(args, "padded_vocab_size", where, info.get("padded_vocab_size"), required=True))
    tp = int(_arg(args, "tensor_model_parallel_size", where, 1))
    pp = int(_arg(args, "pipeline_model_parallel_size", where, 1))
    world = _arg(args, "world_size", where)
    dp = _arg(args, "data_parallel_size", where, engine.get("dp_world_size"))
    if dp is None and isinstance(world, int):
        dp = world // (tp * pp)
    ds_config = engine.get("ds_config") if isinstance(engine.get("ds_config"), dict) else {}
    zero = _arg(args, "zero_stage", where, (ds_config.get("zero_optimization") or {}).get("stage", 1))
    model = config_mod.ModelConfig(
        hidden_size=int(_arg(args, "hidden_size", where, required=True)),
        num_layers=int(_arg(args, "num_layers", where, required=True)),
        num_attention_heads=int(_arg(args, "num_attention_heads", where, required=True)),
        vocab_size=int(info.get("original_vocab_size") or padded),
        make_vocab_size_divisible_by=int(_arg(args, "make_vocab_size_divisible_by", where, 128)),
        pad_vocab_size_to=padded, layernorm_epsilon=float(_arg(args, "layernorm_epsilon", where, 1e-5)),
        hidden_dropout=float(_arg(args, "hidden_dropout", where, 0.0)),
        attention_dropout=float(_arg(args, "attention_dropout", where, 0.0)),
        init_std=_arg(args, "init_method_std", where))
    parallel = config_mod.ParallelConfig(tp=tp, pp=pp, dp=int(dp or 1), zero_stage=int(zero))
    train = config_mod.TrainConfig(
        seq_length=int(_arg(args, "seq_length", where, 2048)),
        micro_batch_size=int(_arg(args, "micro_batch_size", where, 1)),
        global_batch_size=int(_arg(args, "global_batch_size", where, 1)),
        rampup_batch_size=_rampup(args, where), **_lr_samples(args, where),
        lr=float(_arg(args, "lr", where, 5e-3)), min_lr=float(_arg(args, "min_lr", where, 0.0)),
        weight_decay=float(_arg(args, "weight_decay", where, 0.1)),
        clip_grad=float(_arg(args, "clip_grad", where, 1.0)), seed=int(_arg(args, "seed", where, 42)),
        precision="bf16" if getattr(args, "bf16", False) else "fp32")
    return config_mod.RunConfig(model=model, parallel=parallel, train=train)


def step_of(engine: dict) -> int | None:
    """Megatron's ``iteration`` (ours: the ``bigops`` step)."""
    ours = engine.get("bigops") if isinstance(engine.get("bigops"), dict) else {}
    for value in (ours.get("step"), engine.get("iteration"), engine.get("global_steps")):
        if isinstance(value, int):
            return value
    return None


def consumed_samples_of(engine: dict) -> int | None:
    ours = engine.get("bigops") if isinstance(engine.get("bigops"), dict) else {}
    value = ours.get("consumed_samples", getattr(engine.get("args"), "consumed_train_samples", None))
    return value if isinstance(value, int) else None


# ------------------------------------------------------------------------------------ completeness, no manifest

def expected_files(cfg: config_mod.RunConfig) -> list[str]:
    """The files a checkpoint of this layout cannot lack: every saved layer on every TP rank, every model-
    parallel rank's engine file. (Optimizer files may be absent: Megatron's ``--no-save-optim``.)"""
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    names = [LAYER_FILE.format(layer=i, tp=r) for i in layout.saved_layers(cfg.model.num_layers) for r in range(tp)]
    return sorted(names + [ENGINE_FILE.format(mp=mp) for mp in range(tp * pp)])


def zip_problem(path: Path) -> str | None:
    """None if every entry of a torch (zip) file matches its CRC-32, else what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{path.name}: not a readable torch file ({type(exc).__name__}: truncated or altered)"
    return f"{path.name}: CRC of {bad} differs (altered)" if bad else None


def structural_problems(directory: Path, cfg: config_mod.RunConfig, hashes: bool = True) -> list[str]:
    """Problems of a checkpoint without a manifest (one Megatron-DeepSpeed wrote): missing files, and with
    ``hashes`` every ``.pt`` file's CRCs."""
    directory = Path(directory)
    problems = [f"{name}: missing" for name in expected_files(cfg) if not (directory / name).is_file()]
    if hashes:
        for path in sorted(directory.glob("*.pt")):
            if (problem := zip_problem(path)) is not None:
                problems.append(problem)
    return sorted(problems)


def has_manifest(directory: Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def problems(directory: Path, hashes: bool = True) -> list[str]:
    """What is wrong with a tag directory (empty: complete and intact). Ours: checked against its manifest
    (no manifest: incomplete, a save that never finished). One Megatron-DeepSpeed wrote (no manifest, its
    ``args`` and no bigops config inside): checked by the layout (:func:`structural_problems`)."""
    directory = Path(directory)
    if has_manifest(directory):
        return verify(directory, hashes=hashes)
    try:
        engine = read_engine(directory)
        cfg = run_config(engine, directory)
    except CheckpointError:
        return verify(directory, hashes=hashes)  # neither: an incomplete checkpoint of ours
    if written_by_bigops(engine):
        return verify(directory, hashes=hashes)
    return structural_problems(directory, cfg, hashes=hashes)


def stand_in_manifest(engine: dict, cfg: config_mod.RunConfig) -> dict:
    """What our manifest would say of a checkpoint Megatron-DeepSpeed wrote (no file hashes: it has none),
    for the tools that read a manifest (surgery copies these facts into the tag it writes)."""
    p = cfg.parallel
    return {"files": {}, "step": step_of(engine), "consumed_samples": consumed_samples_of(engine),
            "topology": {"tp": p.tp, "pp": p.pp, "dp": p.dp}, "precision": cfg.train.precision,
            "written_by": "Megatron-DeepSpeed"}


# ------------------------------------------------------------------------------------ full tensors

def layer_tensors(directory: Path, cfg: config_mod.RunConfig, layer: int,
                  dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """HF name (without ``transformer.``) -> full tensor of one pipeline layer, merged over its TP files."""
    from trainer.parallel.plan import merge
    tp, num_layers = cfg.parallel.tp, cfg.model.num_layers
    shards = [safe_load.load(layer_file(directory, layer, r), map_location="cpu", mmap=True) for r in range(tp)]
    out = {}
    for key in shards[0]:
        missing = [r for r, s in enumerate(shards) if key not in s]
        if missing:
            raise CheckpointError(f"{layer_file(directory, layer, missing[0])} lacks {key}: the checkpoint is "
                                  f"damaged")
        try:
            name = layout.hf_name(num_layers, layer, key)
        except ValueError as exc:
            raise CheckpointError(f"{layer_file(directory, layer, 0)}: {exc}") from None
        full = merge(name, [s[key] for s in shards])
        out[name] = full.to(dtype) if dtype is not None else full
    return out


def full_tensor_reader(directory: Path, cfg: config_mod.RunConfig) -> Callable[[str], torch.Tensor]:
    """HF name -> full tensor, reading one pipeline layer at a time (the last one read is kept: a model's
    parameters are asked for in layer order, so each file is read once)."""
    cache: dict[int, dict[str, torch.Tensor]] = {}

    def get(name: str) -> torch.Tensor:
        try:
            layer, _ = layout.locate(cfg.model.num_layers, name)
        except ValueError as exc:
            raise CheckpointError(f"{directory}: {exc}") from None
        if layer not in cache:
            cache.clear()
            cache[layer] = layer_tensors(directory, cfg, layer)
        return cache[layer][name]
    return get


SOURCE = "the Megatron-DeepSpeed checkpoint"
"""How errors about the model's shape name the checkpoint (``trainer.hf.check_compatible``)."""


def hf_shape(cfg: config_mod.RunConfig) -> dict:
    """The model's shape as a HF BLOOM ``config.json`` would give it (the padded vocabulary: the embedding's
    rows), so a run started from the checkpoint takes and checks its shape as ``--init-hf`` does."""
    m = cfg.model
    return {"model_type": "bloom", "hidden_size": m.hidden_size, "n_layer": m.num_layers,
            "n_head": m.num_attention_heads, "vocab_size": cfg.padded_vocab_size,
            "layer_norm_epsilon": m.layernorm_epsilon, "initializer_range": m.resolved_init_std}


def open_tag(path: Path) -> tuple[Path, config_mod.RunConfig]:
    """(tag directory, run config) of a Megatron-DeepSpeed BLOOM checkpoint, refused in one line if it is
    incomplete (our manifest's sizes when it has one; else the layout's files). For ``--init-megatron``:
    ``path`` is a tag directory, or a save directory (``--save``, a run's ``checkpoints``) with ``latest``."""
    path = Path(path)
    if (path / LATEST).is_file() and not (path / ENGINE_FILE.format(mp=0)).is_file():
        path = path / check_tag((path / LATEST).read_text(errors="replace").strip())
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    layout.check_written_layout(path)
    engine = read_engine(path)
    cfg = run_config(engine, path)
    found = verify(path, hashes=False) if has_manifest(path) else structural_problems(path, cfg, hashes=False)
    if found:
        raise CheckpointError(f"{path} is incomplete or damaged: {found[0]}")
    return path, cfg

