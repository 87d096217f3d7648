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
from typing import Callable, Iterator

import torch

from bigops.errors import CheckpointError
from trainer import config as config_mod
from trainer import layout, megatron
from trainer.rundir import RunDir


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint tag of a run, with the config it was trained with."""

    path: Path
    tag: str
    config: config_mod.RunConfig
    step: int | None
    manifest: dict
    """Ours; for a checkpoint Megatron-DeepSpeed wrote, ``trainer.megatron.stand_in_manifest``."""
    foreign: bool = False
    """Written by Megatron-DeepSpeed itself: no manifest, no bigops run config (derived from its ``args``)."""

    def layer_file(self, layer: int, tp_rank: int) -> Path:
        return megatron.layer_file(self.path, layer, tp_rank)


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
    try:
        layout.check_written_layout(path)
        problems = megatron.problems(path, hashes=False)  # `bigops ckpt verify` re-hashes; sizes refuse here
        if problems:
            raise CheckpointError(f"checkpoint {tag} is incomplete or damaged: {problems[0]}")
        engine = megatron.read_engine(path)
        cfg = megatron.run_config(engine, path)
    except BadTag as exc:
        raise CheckpointError(str(exc)) from None
    from trainer import checkpoint as ckpt
    manifest = ckpt.read_manifest(path) if megatron.has_manifest(path) else megatron.stand_in_manifest(engine, cfg)
    return CheckpointRef(path=path, tag=tag, config=cfg, step=megatron.step_of(engine), manifest=manifest,
                         foreign=not megatron.written_by_bigops(engine))


def iter_full_tensors(ckpt: CheckpointRef, dtype: torch.dtype | None = None,
                      on_layer: Callable[[int, int], None] = lambda done, total: None
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name without ``transformer.``, full tensor), merged over TP ranks, one layer at a time;
    ``on_layer(done, total)`` when the consumer asks for the tensors after a layer's (for a progress line).

    The tied LM head (the last pipeline layer) is not stored separately: it is ``word_embeddings``.
    """
    layers = layout.saved_layers(ckpt.config.model.num_layers)
    for done, layer in enumerate(layers, 1):
        yield from megatron.layer_tensors(ckpt.path, ckpt.config, layer, dtype).items()
        on_layer(done, len(layers))
