"""Offline checkpoint surgery, never in place: read a source tag, write a new tag beside it, verify the new
one, and only then point ``latest`` at it. The source tag is never modified.

A surgery is a set of edits (``Edit``: which files it rewrites and how); everything else about it — refusing
an incomplete or in-use checkpoint, the partial directory, hard links for untouched files, the manifest,
verification, the rename, ``latest``, the ``events.jsonl`` record — is shared here.

A crash (even SIGKILL) at any instant leaves the source tag and ``latest`` as they were; at worst a
``checkpoints/.partial-<new tag>`` directory remains, which nothing resumes from and the next surgery
replaces.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bigops.checkpoint import dsfiles, tp_duplicates
from bigops.errors import BigopsError, CheckpointError
from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer.rundir import RunDir, append_event, atomic_write_text, pid_alive, read_heartbeats

ACTIVE_HEARTBEAT_S = 120.0
"""A rank whose heartbeat is younger than this (and not at ``exit``) counts as running."""


class RunInUseError(BigopsError):
    exit_code = 5


@dataclass(frozen=True)
class Source:
    run: RunDir
    tag: str
    path: Path
    manifest: dict
    config: config_mod.RunConfig
    layout: dsfiles.Layout


@dataclass
class Edit:
    """One surgery verb: ``rewrite(source, out_dir, report)`` writes the files it changes into ``out_dir``
    (with :func:`dsfiles.save`) and returns their manifest entries by name; ``check(new_source)`` returns
    problems with the result (empty: good)."""

    name: str
    describe: str
    rewrite: Callable[[Source, Path, dict], dict[str, dict]]
    check: Callable[[Source], list[str]] = lambda new: []
    preview: Callable[[Source], object] | None = None
    """What the edit finds before changing anything (shown by the CLI; computed once, reused by ``rewrite``)."""


@dataclass
class Outcome:
    source_tag: str
    new_tag: str | None
    details: dict = field(default_factory=dict)
    latest_moved: bool = False
    seconds: float = 0.0
    bytes_written: int = 0


# ------------------------------------------------------------------------------------------------ refusals

def running_ranks(run: RunDir, now: float | None = None) -> list[dict]:
    """Heartbeats of ranks that look alive: not at ``exit``, and either recent or a live local process."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    alive = []
    for beat in read_heartbeats(run).values():
        if beat.get("phase") == "exit":
            continue
        recent = now - float(beat["time"]) < ACTIVE_HEARTBEAT_S
        local_alive = beat.get("host") == host and isinstance(beat.get("pid"), int) and pid_alive(beat["pid"])
        if local_alive or (recent and beat.get("host") != host):
            alive.append(beat)
    return alive


def open_source(run_dir: Path, tag: str | None, verify_hashes: bool = True) -> Source:
    """The checkpoint to operate on, refused with one line if it is not complete and intact."""
    from bigops.checkpoint.layout import open_checkpoint
    ref = open_checkpoint(run_dir, tag)  # tag checks, presence, sizes, the run config inside
    if verify_hashes:
        problems = ckpt.verify(ref.path, hashes=True)
        if problems:
            raise CheckpointError(f"checkpoint {ref.tag} is damaged: {problems[0]}")
    p = ref.config.parallel
    return Source(RunDir(Path(run_dir)), ref.tag, ref.path, ckpt.read_manifest(ref.path), ref.config,
                  dsfiles.scan(ref.path, p.tp, p.pp, p.dp))


def new_tag_for(run: RunDir, source_tag: str, verb: str) -> str:
    """``<verb>-<source tag>`` (``<verb>2-...`` if taken): it keeps the source's step as its trailing number,
    so step ordering (resume fallback, rollback, prune) treats it as the same step, newer."""
    for n in range(1, 1000):
        tag = f"{verb}{'' if n == 1 else n}-{source_tag}"
        if len(tag) <= 128 and not run.checkpoint(tag).exists():
            return ckpt.check_tag(tag)
    raise CheckpointError(f"no free tag name for {verb} of {source_tag}")


# ------------------------------------------------------------------------------------------------ the run

def _link_or_copy(src: Path, dst: Path) -> bool:
    """Files a surgery does not change are hard-linked (no copy of a 2 TB checkpoint for a 1 GB edit): no
    bigops tool ever edits a checkpoint file in place, so sharing the inode is safe; copy across devices.
    True when linked (the bytes are the verified source's)."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def perform(source: Source, edits: list[Edit], *, move_latest: bool | None = None, dry_run: bool = False,
            progress: Callable[[str], None] = lambda s: None, verb: str = "surgery") -> Outcome:
    """Apply ``edits`` to ``source`` into a new tag (see the module docstring). ``move_latest``: None = move it
    only if it named the source."""
    run = source.run
    started = time.perf_counter()
    outcome = Outcome(source.tag, None)
    if dry_run:
        outcome.details = {e.name: e.describe for e in edits}
        return outcome
    new_tag = new_tag_for(run, source.tag, verb)
    partial = ckpt.partial_dir(run, new_tag)
    if partial.exists():
        shutil.rmtree(partial)  # a crashed surgery's leftovers (never a source: tags never start with '.')
    partial.mkdir(parents=True)
    details: dict = {}
    written: dict[str, dict] = {}  # name -> manifest entry, hashed while written
    try:
        for edit in edits:
            progress(f"{edit.name}: {edit.describe}")
            changed = edit.rewrite(source, partial, details)
            overlap = written.keys() & changed.keys()
            if overlap:
                raise BigopsError(f"two surgery edits rewrite {sorted(overlap)[0]}: run them one at a time")
            written.update(changed)
        known = dict(written)
        for f in sorted(p for p in source.path.iterdir() if p.is_file() and p.name != ckpt.MANIFEST):
            if f.name not in written and _link_or_copy(f, partial / f.name) and f.name in source.manifest["files"]:
                known[f.name] = source.manifest["files"][f.name]  # the same inode as a verified file
        outcome.bytes_written = sum(meta["size"] for meta in written.values())
        info = {k: v for k, v in source.manifest.items() if k not in ("files", "tag", "created", "format")}
        info["derived_from"] = source.tag
        info["surgery"] = {"edits": [e.name for e in edits], "details": details, "time": time.time()}
        progress("sealing the new checkpoint (manifest)")
        ckpt.write_manifest(partial, new_tag, info, known=known)
        problems = ckpt.verify(partial, hashes=False)
        new_source = Source(run, new_tag, partial, ckpt.read_manifest(partial), source.config,
                            dsfiles.scan(partial, source.layout.tp, source.layout.pp, source.layout.dp))
        progress("verifying the new checkpoint")
        problems += _loads(partial, set(written))
        for edit in edits:
            problems += edit.check(new_source)
        if problems:
            raise CheckpointError(f"the new checkpoint failed verification ({problems[0]}); "
                                  f"{source.tag} and latest are untouched")
        final = run.checkpoint(new_tag)
        os.replace(partial, final)
        ckpt.fsync_dir(run.checkpoints)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    outcome.new_tag = new_tag
    outcome.details = details
    if move_latest is None:
        move_latest = run.latest_tag() == source.tag
    if move_latest:
        atomic_write_text(run.latest, new_tag + "\n")
        outcome.latest_moved = True
    outcome.seconds = time.perf_counter() - started
    append_event(run, {
        "time": time.time(), "type": "action", "id": uuid.uuid4().hex[:12], "action": "surgery",
        "edits": [e.name for e in edits], "source": source.tag, "new_tag": new_tag, "latest_moved": move_latest,
        "details": details, "seconds": round(outcome.seconds, 3), "severity": "info",
        "outcome": f"wrote {new_tag}" + (" and pointed latest at it" if move_latest else ""),
    })
    return outcome


def _loads(directory: Path, names: set[str]) -> list[str]:
    """Every file the surgery wrote loads again (weights only); the others are links to verified files."""
    problems = []
    for f in sorted(directory / n for n in names):
        try:
            sd = dsfiles.load(f)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        del sd
    return problems


# ------------------------------------------------------------------------------------------------ verbs

def sync_layernorm_edit(method: str = "mean") -> Edit:
    """Make every TP-duplicated tensor identical across TP ranks: weights, fp32 master, exp_avg, exp_avg_sq."""
    if method not in ("mean", "rank0"):
        raise BigopsError(f"--method {method!r}: use mean or rank0")

    reports: dict[tuple, tp_duplicates.Report] = {}

    def preview(source: Source) -> tp_duplicates.Report:
        """compare-tp of the source, once per source (a tag never changes once its manifest is written)."""
        key = (str(source.path), source.manifest.get("created"))
        if key not in reports:
            reports[key] = tp_duplicates.compare_tp(source.layout)
        return reports[key]

    def rewrite(source: Source, out: Path, details: dict) -> dict[str, dict]:
        if source.layout.tp == 1:
            raise BigopsError(f"{source.tag} was trained with TP 1: there is nothing to sync")
        if not source.layout.optim_files:
            raise CheckpointError(f"{source.tag} has no ZeRO-1 / BF16_Optimizer files: its optimizer state "
                                  f"(parallel.zero_stage=0 in fp32) is not supported by this surgery")
        before = preview(source)
        details["before"] = {"counts": before.counts(), "max_abs_diff": before.max_abs_diff()}
        changed = {"weights": 0, "optimizer": 0}
        written: dict[str, dict] = {}
        for files in source.layout.layer_files.values():
            changed["weights"] += tp_duplicates.sync_layer_files(files, out, method, written)
        for files in source.layout.optim_files.values():
            changed["optimizer"] += tp_duplicates.sync_optimizer_files(files, out, method, written)
        details["method"] = method
        details["tensors_changed"] = changed
        return written

    def check(new: Source) -> list[str]:
        after = tp_duplicates.compare_tp(new.layout)
        return [f"{c.kind} {c.where} {c.name} still differs on TP ranks {list(c.differing_ranks)}"
                for c in after.out_of_sync]

    return Edit("sync-layernorm", f"average TP-duplicated tensors ({method})", rewrite, check, preview)


@dataclass(frozen=True)
class EngineChange:
    """A change to the engine state files (``mp_rank_*_model_states.pt``: LR scheduler, client state)."""

    name: str
    describe: str
    apply: Callable[[dict], None]


def engine_edit(changes: list[EngineChange]) -> Edit:
    """One edit that applies every engine change to every ``mp_rank_*_model_states.pt``."""

    def rewrite(source: Source, out: Path, details: dict) -> dict[str, dict]:
        written = {}
        for f in source.layout.engine_files:
            sd = dsfiles.load(f)
            for change in changes:
                change.apply(sd)
            written[f.name] = dsfiles.save(sd, out / f.name)
        return written

    return Edit("+".join(c.name for c in changes), "; ".join(c.describe for c in changes), rewrite)


def reset_lr_schedule() -> EngineChange:
    """Restart the LR schedule (warm-up included) from its first step, keeping the step counter and data."""

    def apply(sd: dict) -> None:
        sched = sd.get("lr_scheduler")
        if not isinstance(sched, dict) or "last_epoch" not in sched:
            raise CheckpointError("the checkpoint has no LR scheduler state to reset")
        sched["last_epoch"] = 0
        sched["_step_count"] = 1

    return EngineChange("reset-lr-schedule", "LR schedule back to its step 0 (warm-up again)", apply)


def set_consumed_samples(samples: int) -> EngineChange:
    """Move the data position: the next step reads from sample ``samples`` of the training order."""
    if samples < 0:
        raise BigopsError(f"--set-consumed-samples {samples}: must be >= 0")

    def apply(sd: dict) -> None:
        ours = sd.get("bigops")
        if not isinstance(ours, dict):
            raise CheckpointError("the checkpoint has no bigops client state (data position)")
        ours["consumed_samples"] = samples

    return EngineChange("set-consumed-samples", f"data position -> sample {samples}", apply)


def set_lr(lr: float, min_lr: float | None) -> EngineChange:
    """Override the peak LR (and the floor) for the rest of the run; the schedule keeps its position. The run
    config inside the checkpoint and the scheduler's base LR are updated; ``run.toml`` by the caller."""
    if not lr > 0 or (min_lr is not None and not 0 <= min_lr <= lr):
        raise BigopsError(f"--set-lr {lr} / --set-min-lr {min_lr}: need lr > 0 and 0 <= min_lr <= lr")

    def apply(sd: dict) -> None:
        sched, ours = sd.get("lr_scheduler"), sd.get("bigops")
        if not isinstance(sched, dict) or not isinstance(ours, dict) or "config" not in ours:
            raise CheckpointError("the checkpoint has no LR scheduler state or run config to change")
        sched["base_lrs"] = [lr for _ in sched.get("base_lrs", [lr])]
        train = ours["config"].setdefault("train", {})
        train["lr"] = lr
        if min_lr is not None:
            train["min_lr"] = min_lr

    floor = f", min_lr -> {min_lr}" if min_lr is not None else ""
    return EngineChange("set-lr", f"train.lr -> {lr}{floor}", apply)


def reset_optimizer_edit() -> Edit:
    """Zero Adam's moments and step counts (keeps master weights): the cure BLOOM's successors used after a
    divergence whose cause sat in the second moments."""

    def rewrite(source: Source, out: Path, details: dict) -> dict[str, dict]:
        if not source.layout.optim_files:
            raise CheckpointError(f"{source.tag} has no ZeRO-1 / BF16_Optimizer files to reset")
        written = {}
        for files in source.layout.optim_files.values():
            for f in files:
                sd = dsfiles.load(f)
                osd = dsfiles.optimizer_state(sd, f)
                for state in osd["base_optimizer_state"]["state"].values():
                    for key in ("exp_avg", "exp_avg_sq"):
                        with torch.no_grad():
                            state[key].zero_()
                    if "step" in state:
                        state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
                written[f.name] = dsfiles.save(sd, out / f.name)
        return written

    def check(new: Source) -> list[str]:
        for files in new.layout.optim_files.values():
            osd = dsfiles.optimizer_state(dsfiles.load(files[0]), files[0])
            if any(s["exp_avg_sq"].abs().max().item() != 0 for s in osd["base_optimizer_state"]["state"].values()):
                return [f"{files[0].name}: moments are not zero"]
        return []

    return Edit("reset-optimizer", "Adam moments and step counts to zero", rewrite, check)
