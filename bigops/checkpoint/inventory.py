"""What checkpoints a run directory holds, and the checks on them, without loading any tensor.

Under ``RUN/checkpoints/`` (see trainer.checkpoint and bigops.checkpoint.rollback):

- ``<tag>/``                       a published checkpoint (manifest written last, then renamed into place);
- ``.partial-<tag>/``              a save being written, or one that crashed before its rename;
- ``.rolled-back/<event>/<tag>/``  checkpoints a watchdog rollback set aside (evidence: never touched);
- ``.superseded/<tag>-<time>/``   a save of the same step replaced it (damaged, or another lineage: see
                                   trainer.checkpoint); evidence, never touched (``.damaged/``: older name);
- ``.deleting-<tag>/``             a prune renamed it there before removing it (a crash left it behind);
- ``<tag>/KEEP``                   a marker (``bigops ckpt mark``): prune keeps this checkpoint.

:func:`scan` reads names, sizes, manifests and verified stamps only (no hashing); :func:`verify_entry` and
:func:`newest_intact` re-hash.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bigops.checkpoint.rollback import ASIDE
from bigops.errors import CheckpointError
from trainer import checkpoint as ckpt
from trainer import megatron, verified
from trainer.rundir import RunDir

DELETING_PREFIX = ".deleting-"
KEEP_MARKER = "KEEP"
SUPERSEDED_ASIDE = "superseded"
"""``Entry.aside`` of a checkpoint a save of the same step set aside (under ``ckpt.SUPERSEDED``)."""

# what the verified stamp says of a complete entry (sizes and stat only, no hashing)
VERIFIED = "verified"
UNVERIFIED = "not verified"
DAMAGED = "damaged"

# states of an entry
COMPLETE = "complete"
INCOMPLETE = "incomplete"      # a tag directory whose manifest is missing or whose files do not match it
PARTIAL = "partial"            # .partial-<tag>: being written or crashed
DELETING = "deleting"          # .deleting-<tag>: an interrupted prune


@dataclass(frozen=True)
class Entry:
    """One checkpoint directory of a run."""

    tag: str
    path: str                       # relative to RUN/checkpoints
    state: str                      # COMPLETE, INCOMPLETE, PARTIAL or DELETING
    step: int
    size: int                       # bytes of every file under it
    files: int
    created: float | None           # manifest's time, else the directory's mtime
    problem: str | None = None      # why it is not complete (first problem; sizes only, no hashing)
    latest: bool = False
    aside: str | None = None        # the rollback event that set it aside, if any
    marked: bool = False            # holds a KEEP marker
    verified: str | None = None     # VERIFIED, UNVERIFIED or DAMAGED by its stamp (trainer.verified); None: no manifest
    stamp_problem: str | None = None  # what the stamp found damaged (first problem)

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    @property
    def label(self) -> str:
        if self.state == PARTIAL:
            return "partial (being written or crashed)"
        if self.state == DELETING:
            return "deleting (interrupted prune)"
        return self.state

    def as_dict(self) -> dict:
        return {**asdict(self), "complete": self.complete, "label": self.label}


@dataclass(frozen=True)
class Inventory:
    run: RunDir
    entries: tuple[Entry, ...]
    latest: str | None              # what checkpoints/latest names (None: no such file)
    latest_problem: str | None      # latest is corrupt or names no complete checkpoint

    def live(self) -> list[Entry]:
        """Tag directories directly under checkpoints/ (complete or not), oldest first."""
        return [e for e in self.entries if e.state in (COMPLETE, INCOMPLETE) and e.aside is None]

    def newest_verified(self) -> Entry | None:
        """The newest live checkpoint whose stamp vouches for every file (what a resume trusts unread)."""
        return next((e for e in reversed(self.live()) if e.complete and e.verified == VERIFIED), None)

    def as_dict(self) -> dict:
        return {"run": str(self.run.root), "latest": self.latest, "latest_problem": self.latest_problem,
                "checkpoints": [e.as_dict() for e in self.entries]}


def open_run(run_dir: str | Path) -> RunDir:
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise CheckpointError(f"{run.root} is not a run directory (no such directory)")
    return run


def _du(path: Path) -> tuple[int, int]:
    size = count = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                count += 1
            except FileNotFoundError:  # removed while we walk (a save or prune at work)
                pass
    return size, count


def describe(root: Path, path: Path, tag: str, state: str | None = None, aside: str | None = None,
             latest: bool = False) -> Entry:
    """One checkpoint directory: manifest step and time, sizes, completeness (sizes only)."""
    size, files = _du(path)
    step, created, problem = ckpt.step_of(tag), None, None
    try:
        manifest = ckpt.read_manifest(path)
    except ckpt.CheckpointError:
        manifest = None
    if manifest is not None:
        if isinstance(manifest.get("step"), int):
            step = manifest["step"]
        if isinstance(manifest.get("created"), (int, float)):
            created = float(manifest["created"])
    problems = megatron.problems(path, hashes=False)  # no manifest: incomplete, unless Megatron-DeepSpeed's
    problem = problems[0] if problems else None
    if created is None:
        try:
            created = path.stat().st_mtime
        except FileNotFoundError:
            pass
    if state is None:
        state = INCOMPLETE if problem else COMPLETE
    stamp, stamp_problem = None, None
    if manifest is not None and state == COMPLETE:
        check = verified.check(path, manifest)
        stamp = DAMAGED if check.problems else VERIFIED if check.fully_verified else UNVERIFIED
        stamp_problem = check.problems[0] if check.problems else None
    return Entry(tag=tag, path=path.relative_to(root).as_posix(), state=state, step=step, size=size, files=files,
                 created=created, problem=problem, latest=latest, aside=aside, marked=(path / KEEP_MARKER).is_file(),
                 verified=stamp, stamp_problem=stamp_problem)


def read_latest(run: RunDir) -> tuple[str | None, str | None]:
    """(tag ``latest`` names, problem with it) — the tag is None when the file is absent or corrupt."""
    try:
        raw = run.latest.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        return ckpt.check_tag(raw.decode("ascii").strip()), None
    except (UnicodeDecodeError, ckpt.CheckpointError):
        return None, f"{run.latest} is corrupt (it should hold one checkpoint tag)"


def scan(run: RunDir) -> Inventory:
    """Every checkpoint directory of a run, oldest step first (set-aside ones after the live ones)."""
    latest, latest_problem = read_latest(run)
    entries: list[Entry] = []
    root = run.checkpoints
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if not path.is_dir() or path.is_symlink():
                continue
            name = path.name
            if name.startswith(ckpt.PARTIAL_PREFIX):
                entries.append(describe(root, path, name[len(ckpt.PARTIAL_PREFIX):], state=PARTIAL))
            elif name.startswith(DELETING_PREFIX):
                entries.append(describe(root, path, name[len(DELETING_PREFIX):], state=DELETING))
            elif name == ASIDE:
                for event in sorted(p for p in path.iterdir() if p.is_dir()):
                    for tagdir in sorted(p for p in event.iterdir() if p.is_dir()):
                        entries.append(describe(root, tagdir, tagdir.name, aside=event.name))
            elif name in (ckpt.SUPERSEDED, ckpt.LEGACY_DAMAGED):
                for copy in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()):
                    tag = copy.name.rsplit("-", 1)[0] if "-" in copy.name else copy.name
                    entries.append(describe(root, copy, tag, aside=SUPERSEDED_ASIDE))
            elif not name.startswith("."):
                try:
                    ckpt.check_tag(name)
                except ckpt.CheckpointError:
                    continue  # not a checkpoint (the trainer never writes such a name)
                entries.append(describe(root, path, name, latest=name == latest))
    entries.sort(key=lambda e: (e.aside is not None, e.step, e.tag, e.aside or ""))
    if latest is not None and latest_problem is None:
        named = [e for e in entries if e.latest]
        if not named:
            latest_problem = f"latest names {latest}, which does not exist under {root}"
        elif not named[0].complete:
            latest_problem = f"latest names {latest}, which is incomplete: {named[0].problem}"
    return Inventory(run=run, entries=tuple(entries), latest=latest, latest_problem=latest_problem)


def require_checkpoints(inv: Inventory) -> Inventory:
    if not inv.entries:
        raise CheckpointError(f"{inv.run.root} has no checkpoint (nothing under {inv.run.checkpoints})")
    return inv


def resolve(inv: Inventory, tag: str | None) -> Entry:
    """The checkpoint ``tag`` names (default: ``latest``); a tag set aside by a rollback is found too."""
    if tag is None:
        if inv.latest is None:
            raise CheckpointError(inv.latest_problem or f"{inv.run.root} has no checkpoint yet "
                                                         f"(no checkpoints/latest); name one with --tag")
        tag = inv.latest
    try:
        ckpt.check_tag(tag)
    except ckpt.CheckpointError as exc:
        raise CheckpointError(str(exc)) from None
    live = [e for e in inv.live() if e.tag == tag]
    if live:
        return live[0]
    aside = [e for e in inv.entries if e.aside is not None and e.tag == tag]
    if len(aside) == 1:
        return aside[0]
    if len(aside) > 1:
        raise CheckpointError(f"checkpoint {tag} was set aside by several rollbacks "
                              f"({', '.join(e.aside for e in aside)}): inspect the directory itself")
    if any(e.tag == tag and e.state == PARTIAL for e in inv.entries):
        raise CheckpointError(f"checkpoint {tag} is partial (being written or crashed): nothing to read yet")
    raise CheckpointError(f"checkpoint {tag!r} does not exist under {inv.run.checkpoints}")


def entry_path(run: RunDir, entry: Entry) -> Path:
    return run.checkpoints / entry.path


# --------------------------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyResult:
    tag: str
    aside: str | None
    problems: tuple[str, ...]
    bytes_hashed: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def throughput(self) -> float:
        """Bytes hashed per second."""
        return self.bytes_hashed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "bytes_per_second": self.throughput}


def newest_intact(run: RunDir, inv: Inventory) -> tuple[Entry | None, dict[str, str]]:
    """The newest live checkpoint whose every file verifies with its sha256 (what a resume could use, whatever
    ``latest`` says), and {tag: first problem} of the newer ones that failed. Hashes newest first and stops at
    the first intact one (usually one checkpoint is read)."""
    damaged: dict[str, str] = {}
    for entry in reversed([e for e in inv.live() if e.complete]):
        problems = megatron.problems(entry_path(run, entry), hashes=True)
        if not problems:
            return entry, damaged
        damaged[entry.tag] = problems[0]
    return None, damaged


def verify_entry(run: RunDir, entry: Entry, on_start=None, on_done=None) -> VerifyResult:
    """Re-hash every file of a checkpoint against its manifest. A live checkpoint of ours gets its verified
    stamp written or refreshed (``trainer.verified``: a resume then trusts it); one set aside is evidence and
    gets nothing written into it. ``on_start(files, bytes)`` / ``on_done(path)``: a progress display (the
    checkpoints with a manifest)."""
    path = entry_path(run, entry)
    started = time.perf_counter()
    if entry.aside is None and megatron.has_manifest(path):
        problems = verified.verify_and_stamp(path, verified.who("bigops ckpt verify"), everything=True,
                                             on_start=on_start, on_done=on_done).problems
    else:
        problems = megatron.problems(path, hashes=True)
    seconds = time.perf_counter() - started
    hashed = 0  # what verify read: the files present with the manifest's size (without one: the CRC'd files)
    try:
        for rel, meta in ckpt.read_manifest(path)["files"].items():
            file = path / rel
            if isinstance(meta, dict) and file.is_file() and file.stat().st_size == meta.get("size"):
                hashed += meta["size"]
    except ckpt.CheckpointError:
        if not problems:
            hashed = sum(f.stat().st_size for f in path.glob("*.pt"))
    return VerifyResult(tag=entry.tag, aside=entry.aside, problems=tuple(problems), bytes_hashed=hashed,
                        seconds=seconds)
