"""Read a bigops DeepSpeed checkpoint of any TP/PP/DP layout, one pipeline layer at a time.

A tag directory holds ``layer_XX-model_YY-model_states.pt`` (layer XX of the pipeline, TP rank YY: a
plain state dict, numbered and named as Megatron-DeepSpeed's BLOOM: ``trainer.layout``),
``mp_rank_XX_model_states.pt`` (engine state: Megatron's ``args``/``iteration``/... and our run config under
``bigops``) and the optimizer files. Only the model-state files are read here, all with
``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from bigops.errors import CheckpointError
from trainer import config as config_mod
from trainer.parallel.plan import merge
from trainer import layout
from trainer.rundir import RunDir


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint tag of a run, with the config it was trained with."""

    path: Path
    tag: str
    config: config_mod.RunConfig
    step: int | None

    def layer_file(self, layer: int, tp_rank: int) -> Path:
        return self.path / f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt"


def _load(path: Path) -> dict:
    """One file, weights only (DeepSpeed's few pickled classes allow-listed: a bf16 ZeRO-0 engine file holds
    the optimizer state); missing or damaged: one line."""
    from bigops.checkpoint import dsfiles
    return dsfiles.load(path)


def open_checkpoint(run_dir: str | Path, tag: str | None = None) -> CheckpointRef:
    """The checkpoint ``tag`` of a run directory (default: the one ``checkpoints/latest`` names)."""
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise CheckpointError(f"{run.root} is not a directory")
    tag = tag or run.latest_tag()
    if tag is None:
        raise CheckpointError(f"{run.root} has no checkpoint yet (no {run.latest.relative_to(run.root)})")
    from trainer.checkpoint import CheckpointError as BadTag
    from trainer.checkpoint import check_tag
    try:
        check_tag(tag)
    except BadTag as exc:
        raise CheckpointError(str(exc)) from None
    path = run.checkpoint(tag)
    if not path.is_dir():
        from trainer.checkpoint import partial_dir
        if partial_dir(run, tag).is_dir():
            raise CheckpointError(f"checkpoint {tag} is being written (or its save crashed): only "
                                  f"{partial_dir(run, tag).name} exists")
        raise CheckpointError(f"checkpoint {tag!r} does not exist under {run.checkpoints}")
    from trainer.checkpoint import verify
    try:
        layout.check_written_layout(path)
    except BadTag as exc:
        raise CheckpointError(str(exc)) from None
    problems = verify(path, hashes=False)  # `bigops ckpt verify` re-hashes; here sizes are enough to refuse
    if problems:
        raise CheckpointError(f"checkpoint {tag} is incomplete or damaged: {problems[0]}")
    state = _load(path / "mp_rank_00_model_states.pt")
    ours = state.get("bigops")
    if not isinstance(ours, dict) or "config" not in ours:
        raise CheckpointError(f"{path} was not written by bigops (no run config inside)")
    try:
        cfg = config_mod.from_dict(ours["config"])
    except config_mod.ConfigError as exc:
        raise CheckpointError(f"{path}: its run config is invalid: {exc}") from None
    return CheckpointRef(path=path, tag=tag, config=cfg, step=ours.get("step"))


def iter_full_tensors(ckpt: CheckpointRef, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name without ``transformer.``, full tensor), merged over TP ranks, one layer at a time.

    The tied LM head (the last pipeline layer) is not stored separately: it is ``word_embeddings``.
    """
    cfg = ckpt.config
    tp, num_layers = cfg.parallel.tp, cfg.model.num_layers
    for layer in layout.saved_layers(num_layers):
        shards = [_load(ckpt.layer_file(layer, rank)) for rank in range(tp)]
        for key in shards[0]:
            missing = [r for r, s in enumerate(shards) if key not in s]
            if missing:
                raise CheckpointError(f"{ckpt.layer_file(layer, missing[0])} lacks {key}: the checkpoint is damaged")
            try:
                name = layout.hf_name(num_layers, layer, key)
            except ValueError as exc:
                raise CheckpointError(f"{ckpt.layer_file(layer, 0)}: {exc}") from None
            full = merge(name, [s[key] for s in shards])
            yield name, (full.to(dtype) if dtype is not None else full)
