"""The I/O edge of ``bigops plot``: read a run directory (``metrics.jsonl``, ``events.jsonl``) or a TensorBoard
log directory (through TensorBoard's own ``EventAccumulator``, every scalar kept) into ``bigops.plot.data``'s
curves. A torn last JSON line is ignored; a path that is neither is a ``ConfigError`` naming it."""

from __future__ import annotations

from pathlib import Path

from bigops.errors import ConfigError
from bigops.plot.data import Curves, run_curves, scalar_curves
from trainer.rundir import RunDir, read_jsonl

EVENT_GLOB = "events.out.tfevents.*"


def is_run(path: Path) -> bool:
    return RunDir(path).metrics.is_file()


def event_dirs(path: Path) -> list[Path]:
    """The folders under ``path`` (itself included) that hold TensorBoard event files, in name order."""
    return sorted({p.parent for p in path.rglob(EVENT_GLOB) if p.is_file()})


def read_run(path: Path, label: str | None = None) -> Curves:
    """A run's curves (``label``: default, the folder's name)."""
    run = RunDir(path)
    return run_curves(read_jsonl(run.metrics), read_jsonl(run.events), label or run.root.name)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``log_dir`` by tag, as ``(step, value)`` pairs in write order
    (several folders, e.g. one per restart, are read in name order and joined)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in event_dirs(log_dir):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def read_tensorboard(path: Path, label: str | None = None) -> Curves:
    return scalar_curves(read_scalars(path), label or path.name)


def read_source(path: Path) -> Curves:
    """A run directory, or a TensorBoard log directory (BLOOM's published logs, another trainer's)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory (a run directory or a TensorBoard log directory)")
    if is_run(path):
        return read_run(path)
    if event_dirs(path):
        return read_tensorboard(path)
    raise ConfigError(f"{path}: neither a run directory (no {RunDir(path).metrics.relative_to(path)}) "
                      f"nor a TensorBoard log directory (no {EVENT_GLOB} files)")
