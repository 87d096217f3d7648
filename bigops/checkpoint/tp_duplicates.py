"""TP-duplicated tensors in a checkpoint: compare them across TP ranks (``compare-tp``) and make them equal
(``surgery --sync-layernorm``), in the weights, the fp32 master weights and both Adam moments.

Layer norms and row-parallel biases are held in full by every TP rank and must stay bit-identical; in
BLOOM-176B they drifted apart (a bf16 optimizer bug skipped gradient clipping on TP ranks > 0) and nobody
noticed for weeks. This is BLOOM's ``compare_tp_weights`` and its fix, as one streaming pass:

- weights: ``layer_LL-model_TT`` files, one pipeline layer at a time (the TP ranks' files of that layer);
- optimizer: the TP peers' ``*zero_pp_rank_DD_mp_rank_MM`` files of each (stage, dp rank). Their flat
  partitions have the same layout on every TP rank (same parameter shapes), so each duplicated parameter's
  fragment sits at the same (start, numel) in each: compare and average fragment by fragment, never
  assembling a full parameter, whatever the DP partitioning.

Only the duplicated tensors (small) are kept in memory; every file is memory-mapped and read once per pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from bigops.checkpoint import dsfiles
from bigops.errors import CheckpointError
from trainer import faults
from trainer.parallel.plan import is_tp_duplicated

KINDS = ("weights", "fp32", "exp_avg", "exp_avg_sq")
"""Where a duplicated tensor lives: the model weights (training dtype), the fp32 master, Adam's moments."""


@dataclass(frozen=True)
class Comparison:
    kind: str
    where: str  # "layer 02" or "stage 0 dp 1 group 1"
    name: str
    max_abs_diff: float
    differing_ranks: tuple[int, ...]  # TP ranks whose copy differs from TP rank 0's

    @property
    def in_sync(self) -> bool:
        return not self.differing_ranks


@dataclass
class Report:
    tp: int
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def out_of_sync(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.in_sync]

    def counts(self) -> dict[str, dict[str, int]]:
        out = {k: {"in_sync": 0, "out_of_sync": 0} for k in KINDS}
        for c in self.comparisons:
            out[c.kind]["in_sync" if c.in_sync else "out_of_sync"] += 1
        return out

    def max_abs_diff(self) -> dict[str, float]:
        out = {k: 0.0 for k in KINDS}
        for c in self.comparisons:
            out[c.kind] = max(out[c.kind], c.max_abs_diff)
        return out

    def to_json(self) -> dict:
        return {"tp": self.tp, "counts": self.counts(), "max_abs_diff": self.max_abs_diff(),
                "in_sync": not self.out_of_sync,
                "out_of_sync": [dataclasses.asdict(c) for c in self.out_of_sync]}


def compare(copies: list[torch.Tensor]) -> tuple[float, tuple[int, ...]]:
    """(max |copy - copy_0| over ranks, ranks whose copy is not bit-identical to rank 0's)."""
    ref = copies[0]
    differing, worst = [], 0.0
    for rank, t in enumerate(copies[1:], 1):
        if not torch.equal(t, ref):
            differing.append(rank)
            worst = max(worst, (t.float() - ref.float()).abs().max().item())
    return worst, tuple(differing)


def synced_value(copies: list[torch.Tensor], method: str) -> torch.Tensor:
    """The one value every TP rank gets: the mean (computed in fp32, cast back) or TP rank 0's copy."""
    if method == "rank0":
        return copies[0].clone()
    if method != "mean":
        raise ValueError(f"unknown method {method!r}")
    return torch.stack([t.float() for t in copies]).mean(dim=0).to(copies[0].dtype)


# ----------------------------------------------------------------------------------------------- gathering

def layer_duplicates(files: list[Path]) -> dict[str, list[torch.Tensor]]:
    """name -> one copy per TP rank, for the duplicated parameters of one pipeline layer."""
    out: dict[str, list[torch.Tensor]] = {}
    for tp_rank, path in enumerate(files):
        sd = dsfiles.load(path)
        for key, value in sd.items():
            if torch.is_tensor(value) and is_tp_duplicated(key):
                out.setdefault(key, []).append(value.clone())
        del sd
    bad = [k for k, v in out.items() if len(v) != len(files)]
    if bad:
        raise CheckpointError(f"{files[0].name}: {bad[0]} is not on every TP rank: the checkpoint is damaged")
    return out


def _duplicated_fragments(osd: dict) -> Iterator[tuple[int, str, int, int]]:
    """(group, name, start, numel) of every duplicated parameter's fragment in this DP rank's partitions."""
    for group, mapping in enumerate(osd["param_slice_mappings"]):
        for name, address in mapping.items():
            if is_tp_duplicated(name):
                yield group, name, int(address.start), int(address.numel)


def _fragment(osd: dict, kind: str, group: int, start: int, numel: int) -> torch.Tensor:
    if kind == "fp32":
        flat = osd["single_partition_of_fp32_groups"][group]
    else:
        flat = osd["base_optimizer_state"]["state"][group][kind]
    return flat.narrow(0, start, numel)


def optimizer_duplicates(files: list[Path]) -> dict[tuple[str, int, str], list[torch.Tensor]]:
    """(kind, group, name) -> one fragment per TP rank, for one (stage, dp rank)."""
    out: dict[tuple[str, int, str], list[torch.Tensor]] = {}
    layout = None
    for path in files:
        osd = dsfiles.optimizer_state(dsfiles.load(path), path)
        fragments = list(_duplicated_fragments(osd))
        if layout is None:
            layout = fragments
        elif fragments != layout:
            raise CheckpointError(f"{path.name}: its duplicated parameters are laid out differently from TP rank "
                                  f"0's ({files[0].name}): not TP peers of one run")
        for group, name, start, numel in fragments:
            for kind in KINDS[1:]:
                out.setdefault((kind, group, name), []).append(_fragment(osd, kind, group, start, numel).clone())
        del osd
    return out


# ----------------------------------------------------------------------------------------------- compare-tp

def compare_tp(layout: dsfiles.Layout, progress: Callable[[Path], None] = lambda p: None) -> Report:
    """Every duplicated tensor of a checkpoint, compared across TP ranks."""
    report = Report(tp=layout.tp)
    for layer, files in layout.layer_files.items():
        for name, copies in layer_duplicates(files).items():
            diff, ranks = compare(copies)
            report.comparisons.append(Comparison("weights", f"layer {layer:02d}", name, diff, ranks))
        for f in files:
            progress(f)
    for (stage, dp), files in layout.optim_files.items():
        for (kind, group, name), copies in optimizer_duplicates(files).items():
            diff, ranks = compare(copies)
            report.comparisons.append(Comparison(kind, f"stage {stage} dp {dp} group {group}", name, diff, ranks))
        for f in files:
            progress(f)
    return report


# ----------------------------------------------------------------------------------------------- sync

def sync_layer_files(files: list[Path], out_dir: Path, method: str, written: dict[str, dict]) -> int:
    """Write the TP ranks' files of one layer into ``out_dir`` with duplicated tensors made equal; every
    other tensor is re-saved unchanged. Returns the number of tensors changed (on any rank); ``written`` gets
    each new file's manifest entry."""
    targets = {name: synced_value(copies, method) for name, copies in layer_duplicates(files).items()}
    changed = 0
    for path in files:
        sd = dsfiles.load(path)
        for name, value in targets.items():
            if not torch.equal(sd[name], value):
                changed += 1
            sd[name] = value.to(sd[name].dtype).clone()
        written[path.name] = dsfiles.save(sd, out_dir / path.name)
        del sd
        faults.surgery_pause()
    return changed


def sync_optimizer_files(files: list[Path], out_dir: Path, method: str, written: dict[str, dict]) -> int:
    """The same for the TP peers' optimizer files of one (stage, dp rank): master weights and moments."""
    targets = {key: synced_value(copies, method) for key, copies in optimizer_duplicates(files).items()}
    changed = 0
    for path in files:
        sd = dsfiles.load(path)
        osd = dsfiles.optimizer_state(sd, path)
        with torch.no_grad():  # the fp32 partitions are saved as Parameters
            for group, name, start, numel in _duplicated_fragments(osd):
                for kind in KINDS[1:]:
                    fragment = _fragment(osd, kind, group, start, numel)  # a view into the private mapping
                    value = targets[(kind, group, name)]
                    if not torch.equal(fragment, value):
                        changed += 1
                        fragment.copy_(value)
        written[path.name] = dsfiles.save(sd, out_dir / path.name)
        del sd, osd
        faults.surgery_pause()
    return changed
