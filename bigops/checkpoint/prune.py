"""Checkpoint retention: decide (a pure function of the inventory) and apply (rename, then remove).

Kept, always: the newest checkpoint that verifies with its hashes (sha256 of every file, whatever ``latest``
says: a bit-flipped ``latest`` has the right sizes, and the intact older one is what a resume falls back
to), the checkpoint ``latest`` names, the last ``keep_last`` complete checkpoints, those whose step is a
multiple of ``keep_every``, those named with ``keep`` or holding a ``KEEP`` marker (``bigops ckpt mark``),
the newest checkpoint before each open loss spike (``protect_before``: a spike watched for
``watchdog.spike_patience`` steps may still be rolled back to it), and any tag directory that is not
complete (it is reported, not judged). When no checkpoint verifies, nothing is pruned. Never touched: partial saves (``.partial-*``: maybe being written), ``.rolled-back/``
(rollback evidence) and ``.superseded/`` (copies a save of the same step replaced).

A removal renames ``<tag>`` to ``.deleting-<tag>`` (atomic) before removing it, so a crash mid-way never
leaves a half-deleted directory that looks like a checkpoint; a later prune finishes such leftovers.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bigops.checkpoint.inventory import (DELETING, DELETING_PREFIX, KEEP_MARKER, PARTIAL, SUPERSEDED_ASIDE, Entry,
                                         Inventory, newest_intact, read_latest)
from bigops.errors import CheckpointError, ConfigError
from trainer import checkpoint as ckpt
from trainer.rundir import RunDir, append_jsonl, atomic_write_text


@dataclass(frozen=True)
class Policy:
    keep_last: int
    keep_every: int | None = None
    keep: tuple[str, ...] = ()
    protect_before: tuple[tuple[int, str], ...] = ()
    """(step, why): keep the newest complete checkpoint whose step is before ``step`` (an open spike's
    rollback target; ``why`` names the incident)."""

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ConfigError(f"--keep-last {self.keep_last}: keep at least the last checkpoint (1 or more)")
        if self.keep_every is not None and self.keep_every < 1:
            raise ConfigError(f"--keep-every {self.keep_every}: use a positive number of steps")
        for tag in self.keep:
            try:
                ckpt.check_tag(tag)
            except ckpt.CheckpointError as exc:
                raise ConfigError(f"--keep: {exc}") from None


@dataclass
class Plan:
    remove: list[Entry] = field(default_factory=list)
    keep: dict[str, list[str]] = field(default_factory=dict)       # tag -> why
    untouched: list[tuple[Entry, str]] = field(default_factory=list)  # partial / set aside / incomplete
    leftovers: list[Entry] = field(default_factory=list)           # .deleting-* from an interrupted prune
    unknown_keep: list[str] = field(default_factory=list)           # --keep tags that are not live checkpoints

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.remove) + sum(e.size for e in self.leftovers)

    def as_dict(self) -> dict:
        return {"remove": [e.tag for e in self.remove], "keep": self.keep, "freed_bytes": self.freed,
                "untouched": [{"tag": e.tag, "path": e.path, "why": why} for e, why in self.untouched],
                "leftovers": [e.path for e in self.leftovers], "unknown_keep": self.unknown_keep}


IntactCheck = tuple[Entry | None, dict[str, str]]
"""(newest live checkpoint that verifies with hashes, {newer tag: its first problem}): inventory.newest_intact."""


def plan_prune(inv: Inventory, policy: Policy, intact: IntactCheck | None = None) -> Plan:
    """What a prune removes and keeps, and why. Refuses when ``latest`` cannot be trusted, or when no
    checkpoint verifies with its hashes. ``intact``: the hash check, done here when not given (the rest is a
    pure function of the inventory)."""
    if inv.latest_problem:
        raise CheckpointError(f"not pruning: {inv.latest_problem}; fix checkpoints/latest first")
    complete = [e for e in inv.live() if e.complete]  # oldest step first
    keeper, damaged = intact if intact is not None else newest_intact(inv.run, inv)
    if complete and keeper is None:
        first = next(iter(damaged.items()))
        raise CheckpointError(f"not pruning: no checkpoint verifies with its hashes ({len(damaged)} checked, e.g. "
                              f"{first[0]}: {first[1]}); run `bigops ckpt verify --all` and repair first")
    plan = Plan()
    last = {e.tag for e in complete[-policy.keep_last:]}
    targets: dict[str, list[str]] = {}
    for step, why in policy.protect_before:
        before = [e for e in complete if 0 <= e.step < step]
        if before:
            targets.setdefault(before[-1].tag, []).append(f"rollback target of {why} (spike from step {step})")
    for entry in inv.entries:
        if entry.aside == SUPERSEDED_ASIDE:
            plan.untouched.append((entry, "superseded by a save of the same step (evidence, never pruned)"))
        elif entry.aside is not None:
            plan.untouched.append((entry, f"set aside by rollback {entry.aside} (evidence, never pruned)"))
        elif entry.state == PARTIAL:
            plan.untouched.append((entry, "partial: maybe being written, or crashed (remove by hand if stale)"))
        elif entry.state == DELETING:
            plan.leftovers.append(entry)
        elif not entry.complete:
            plan.untouched.append((entry, f"incomplete ({entry.problem}): not judged, check it by hand"))
        else:
            why = []
            if entry.latest:
                why.append("latest" + (f" (fails its hashes: {damaged[entry.tag]})" if entry.tag in damaged else ""))
            if entry.tag in last:
                why.append(f"last {policy.keep_last}")
            if policy.keep_every and entry.step >= 0 and entry.step % policy.keep_every == 0:
                why.append(f"step % {policy.keep_every} == 0")
            if entry.tag in policy.keep:
                why.append("--keep")
            if entry.marked:
                why.append(f"{KEEP_MARKER} marker")
            why += targets.get(entry.tag, [])
            if entry == keeper:
                newer = ", ".join(f"{t} fails them" for t in damaged)
                why.append("newest intact (hashes verified" + (f"; {newer}" if newer else "") + ")")
            if why:
                plan.keep[entry.tag] = why
            else:
                plan.remove.append(entry)
    live = {e.tag for e in inv.live()}
    plan.unknown_keep = [t for t in policy.keep if t not in live]
    return plan


def remove_checkpoint(run: RunDir, tag: str) -> None:
    """Rename ``<tag>`` to ``.deleting-<tag>`` (atomic, durable), then remove it."""
    ckpt.check_tag(tag)
    doomed = run.checkpoints / f"{DELETING_PREFIX}{tag}"
    if doomed.exists():  # an earlier prune of the same tag was interrupted
        shutil.rmtree(doomed)
    os.replace(run.checkpoint(tag), doomed)
    ckpt.fsync_dir(run.checkpoints)
    shutil.rmtree(doomed)


@dataclass
class Outcome:
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (tag, why) changed since the plan
    finished: list[str] = field(default_factory=list)              # .deleting-* leftovers removed
    event: dict | None = None


def apply_prune(run: RunDir, plan: Plan, events: Path | None = None) -> Outcome:
    """Remove what ``plan`` says, re-checking ``latest`` and markers just before each removal (a trainer
    may be saving meanwhile), and record the prune in ``RUN/events.jsonl``."""
    out = Outcome()
    for entry in plan.leftovers:
        path = run.checkpoints / entry.path
        if path.name.startswith(DELETING_PREFIX) and path.parent == run.checkpoints:
            shutil.rmtree(path, ignore_errors=True)
            out.finished.append(entry.path)
    for entry in plan.remove:
        latest, problem = read_latest(run)
        if problem or latest == entry.tag:
            out.skipped.append((entry.tag, problem or "latest names it now"))
            continue
        path = run.checkpoint(entry.tag)
        if not path.is_dir():
            out.skipped.append((entry.tag, "gone already"))
            continue
        if (path / KEEP_MARKER).exists():
            out.skipped.append((entry.tag, f"{KEEP_MARKER} marker added since the plan"))
            continue
        remove_checkpoint(run, entry.tag)
        out.removed.append(entry.tag)
    out.event = {"time": time.time(), "type": "action", "action": "prune", "removed": out.removed,
                 "kept": sorted(plan.keep, key=lambda t: (ckpt.step_of(t), t)),
                 "reasons": plan.keep, "skipped": [t for t, _ in out.skipped], "leftovers_removed": out.finished}
    append_jsonl(events if events is not None else run.events, out.event)
    return out


def mark(run: RunDir, tag: str, note: str = "", remove: bool = False) -> Path:
    """Add (or remove) the ``KEEP`` marker of a live checkpoint: prune will keep it."""
    try:
        ckpt.check_tag(tag)
    except ckpt.CheckpointError as exc:
        raise CheckpointError(str(exc)) from None
    path = run.checkpoint(tag)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {tag!r} does not exist under {run.checkpoints}")
    marker = path / KEEP_MARKER
    if remove:
        marker.unlink(missing_ok=True)
    else:
        atomic_write_text(marker, f"kept on purpose {time.strftime('%Y-%m-%d %H:%M:%S')}"
                                  + (f": {note}" if note else "") + "\n")
    return marker
