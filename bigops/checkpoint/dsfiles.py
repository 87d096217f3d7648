"""The files of a DeepSpeed pipeline checkpoint, by role, and a safe loader for each.

A tag directory of a TP x PP x DP run holds:

- ``layer_LL-model_TT-model_states.pt``: pipeline layer LL's weights on TP rank TT (a plain state dict, in
  the training dtype: bf16 or fp32);
- ``mp_rank_MM_model_states.pt``: engine state of model-parallel rank MM = stage x TP + tp_rank (LR scheduler,
  step counters, our ``bigops`` client state);
- ``[bf16_]zero_pp_rank_DD_mp_rank_MM_optim_states.pt``: the optimizer state of data-parallel rank DD of model
  rank MM: for every parameter group one flat fp32 partition (the master weights) and Adam's ``exp_avg`` /
  ``exp_avg_sq`` of the same shape, plus ``param_slice_mappings``: parameter name -> (start, numel) inside
  the partition (ZeRO-1 and DeepSpeed's BF16_Optimizer share this layout);
- ``rng_state_rankNNNNN.pt`` (ours).

Everything is loaded with ``weights_only=True``; the three DeepSpeed classes an optimizer file pickles and
Megatron's ``argparse.Namespace`` and NumPy RNG state of an engine file are allow-listed by name
(``trainer.safe_load.ENGINE_GLOBALS``), nothing else. :func:`load` is the one loader of the checkpoint tools
(``inspect``, ``compare-tp``, surgery).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bigops.errors import CheckpointError
from trainer.resume_check import ENGINE_RE, LAYER_RE, OPTIM_RE, RNG_RE  # noqa: F401 (the file roles, named once)


def _deepspeed_safe_globals() -> list:
    """The allow-list, from one place: trainer.safe_load (the trainer's resume loads with the same one)."""
    from trainer.safe_load import deepspeed_safe_globals
    return deepspeed_safe_globals()


def load(path: Path, mmap: bool = True) -> dict:
    """One checkpoint file, weights only, memory-mapped (pages are read as they are touched; edits stay private)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is partial")
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated, corrupt or foreign: one line, never a traceback
        raise CheckpointError(f"{path} cannot be loaded ({type(exc).__name__}): the file is damaged or not "
                              f"a bigops/DeepSpeed checkpoint file") from None


@dataclass(frozen=True)
class Layout:
    """Which file holds what, for one tag directory of a run with ``tp`` x ``pp`` x ``dp`` ranks."""

    path: Path
    tp: int
    pp: int
    dp: int
    layer_files: dict[int, list[Path]]
    """pipeline layer -> its files, one per TP rank (index = TP rank)."""
    optim_files: dict[tuple[int, int], list[Path]]
    """(stage, dp rank) -> the optimizer files of the TP peers (index = TP rank)."""
    engine_files: list[Path]
    other_files: list[Path]

    def all_files(self) -> list[Path]:
        out = [f for files in self.layer_files.values() for f in files]
        out += [f for files in self.optim_files.values() for f in files]
        return sorted(out + self.engine_files + self.other_files)


def scan(path: Path, tp: int, pp: int, dp: int) -> Layout:
    """Sort a tag directory's files by role; refuse a directory whose files do not match the topology."""
    layers: dict[int, dict[int, Path]] = {}
    optim: dict[tuple[int, int], dict[int, Path]] = {}
    engine, other = [], []
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        if m := LAYER_RE.match(f.name):
            layers.setdefault(int(m["layer"]), {})[int(m["tp"])] = f
        elif m := OPTIM_RE.match(f.name):
            mp = int(m["mp"])
            optim.setdefault((mp // tp, int(m["dp"])), {})[mp % tp] = f
        elif ENGINE_RE.match(f.name):
            engine.append(f)
        else:
            other.append(f)

    def complete(found: dict[int, Path], what: str) -> list[Path]:
        missing = [r for r in range(tp) if r not in found]
        if missing or len(found) != tp:
            raise CheckpointError(f"{path.name}: {what} has files for TP ranks {sorted(found)}, expected 0..{tp - 1}")
        return [found[r] for r in range(tp)]

    layer_files = {layer: complete(found, f"layer {layer}") for layer, found in sorted(layers.items())}
    optim_files = {key: complete(found, f"optimizer stage {key[0]} dp {key[1]}") for key, found in sorted(optim.items())}
    stages = {stage for stage, _ in optim_files}
    if optim_files and (stages != set(range(pp)) or len(optim_files) != pp * dp):
        raise CheckpointError(f"{path.name}: optimizer files for {len(optim_files)} (stage, dp) pairs, expected "
                              f"{pp} x {dp}")
    return Layout(path, tp, pp, dp, layer_files, optim_files, engine, other)


def optimizer_state(sd: dict, path: Path) -> dict:
    """The ``optimizer_state_dict`` of an optimizer file, checked to have the flat-partition layout."""
    osd = sd.get("optimizer_state_dict") if isinstance(sd, dict) else None
    keys = ("single_partition_of_fp32_groups", "param_slice_mappings", "base_optimizer_state")
    if not isinstance(osd, dict) or any(k not in osd for k in keys):
        raise CheckpointError(f"{path.name}: not a ZeRO-1 / BF16_Optimizer state (no flat fp32 partitions); "
                              f"this tool handles parallel.zero_stage=1, or zero_stage=0 with bf16")
    return osd


def save(obj, path: Path) -> dict:
    """``torch.save`` to ``path`` (a new file), fsync'ed; returns {"size"} (the manifest hashes it after, in
    parallel with the other new files: torch's own file writer plus threaded hashing measured 3x faster here
    than hashing inside a Python file object)."""
    if path.exists():
        raise FileExistsError(path)
    torch.save(obj, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"size": path.stat().st_size}
