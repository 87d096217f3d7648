"""Apply a rollback to a run directory: set later checkpoints aside (never delete), point ``latest`` back,
and add the skipped sample range to ``control/skip-ranges``."""

from __future__ import annotations

import os
from pathlib import Path

from bigops.watchdog.policy import RollbackPlan
from trainer import checkpoint as ckpt
from trainer.rundir import RunDir, atomic_write_text

ASIDE = ".rolled-back"


def checkpoints_with_steps(run: RunDir) -> list[tuple[str, int]]:
    """Complete checkpoints (manifest present, sizes right), oldest first."""
    out = []
    for tag in ckpt.complete_tags(run):
        path = run.checkpoint(tag)
        if not ckpt.verify(path, hashes=False):
            step = ckpt.read_manifest(path).get("step")
            out.append((tag, step if isinstance(step, int) else ckpt.step_of(tag)))
    return out


def apply_rollback(run: RunDir, plan: RollbackPlan, event_id: str) -> Path:
    aside = run.checkpoints / ASIDE / event_id
    aside.mkdir(parents=True, exist_ok=True)
    # latest first: at every instant it names a complete checkpoint that is still in place.
    atomic_write_text(run.latest, plan.target_tag + "\n")
    for tag in plan.aside_tags:
        os.replace(run.checkpoint(tag), aside / tag)
    control = run.root / "control"
    control.mkdir(exist_ok=True)
    skip = control / "skip-ranges"
    existing = skip.read_text() if skip.exists() else ""
    line = f"{plan.skip_range[0]}-{plan.skip_range[1]}  # rollback {event_id} to {plan.target_tag}\n"
    atomic_write_text(skip, existing + ("" if existing.endswith("\n") or not existing else "\n") + line)
    return aside
