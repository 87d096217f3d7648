"""The pieces of a rollback, each idempotent (the executor journals them: ``bigops.watchdog.executor``):
add the skipped sample range to ``control/skip-ranges``, point ``latest`` back, set later checkpoints aside
(never delete).

:func:`apply_rollback` runs them in that order for a caller that does not journal (tools, tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainer import checkpoint as ckpt
from trainer import control
from trainer import rundir
from trainer.rundir import RunDir

ASIDE = rundir.ROLLED_BACK


@dataclass(frozen=True)
class RollbackPlan:
    """Where a rollback goes (the watchdog decides it: :func:`bigops.watchdog.decide.plan_rollback`;
    it lives here, below the watchdog, with the code that carries it out)."""
    target_tag: str
    target_step: int
    aside_tags: list[str]
    skip_range: tuple[int, int]


def checkpoints_with_steps(run: RunDir) -> list[tuple[str, int]]:
    """Complete checkpoints (manifest present, sizes right), oldest first."""
    return [(tag, step) for tag, step, _ in checkpoints_with_samples(run)]


def checkpoints_with_samples(run: RunDir) -> list[tuple[str, int, int | None]]:
    """Complete checkpoints as (tag, step, consumed_samples from the manifest or None), oldest first."""
    out = []
    for tag in ckpt.complete_tags(run):
        path = run.checkpoint(tag)
        if not ckpt.verify(path, hashes=False):
            manifest = ckpt.read_manifest(path)
            step, consumed = manifest.get("step"), manifest.get("consumed_samples")
            out.append((tag, step if isinstance(step, int) else ckpt.step_of(tag),
                        consumed if isinstance(consumed, int) and not isinstance(consumed, bool) else None))
    return out


def skip_ranges_path(run_root: Path) -> Path:
    return RunDir(run_root).skip_ranges


def read_skip_ranges(run_root: Path) -> list[tuple[int, int]]:
    """The skip ranges in force (ValueError, one line, when the file does not parse)."""
    return control.read_skip_ranges(Path(run_root))


def add_skip_range(run_root: Path, start: int, end: int, note: str) -> bool:
    """Merge ``[start, end)`` into ``control/skip-ranges`` (``trainer.control.add_skip_range``: under a lock,
    atomically; idempotent: False when the range is in force already)."""
    return control.add_skip_range(Path(run_root), start, end, note)


def point_latest(run: RunDir, tag: str) -> None:
    """``latest`` -> ``tag`` (atomic, durable)."""
    rundir.atomic_write_text(run.latest, tag + "\n")
    ckpt.fsync_dir(run.checkpoints)


def aside_dir(run: RunDir, event_id: str) -> Path:
    return run.checkpoints / ASIDE / event_id


def set_aside(run: RunDir, tags, event_id: str) -> list[str]:
    """Move each live ``tags`` checkpoint into ``checkpoints/.rolled-back/<event_id>/`` (kept); the tags moved
    now (one already moved, or gone, is skipped: idempotent)."""
    aside = aside_dir(run, event_id)
    aside.mkdir(parents=True, exist_ok=True)
    moved = []
    for tag in tags:
        source = run.checkpoint(tag)
        if source.is_dir() and not (aside / tag).exists():
            os.replace(source, aside / tag)
            moved.append(tag)
    ckpt.fsync_dir(aside)
    ckpt.fsync_dir(run.checkpoints)
    return moved


def apply_rollback(run: RunDir, plan: RollbackPlan, event_id: str) -> Path:
    add_skip_range(run.root, plan.skip_range[0], plan.skip_range[1], f"rollback {event_id} to {plan.target_tag}")
    # latest before the set-aside: at every instant it names a complete checkpoint that is still in place.
    point_latest(run, plan.target_tag)
    set_aside(run, plan.aside_tags, event_id)
    return aside_dir(run, event_id)
