"""Atomic checkpoints: DeepSpeed's layout, a manifest, a rename, and only then ``latest``.

Save, in this order (a crash at any instant leaves the previous checkpoint as ``latest``):

1. every rank writes its DeepSpeed files into ``checkpoints/.partial-<tag>/``;
2. rank 0 hashes every file (sha256 + size, fsync'ing each) into ``manifest.json``, written last;
3. rank 0 renames ``.partial-<tag>`` to ``<tag>`` (atomic on one filesystem);
4. rank 0 replaces ``checkpoints/latest`` atomically (temp + rename).

A tag directory without a valid manifest is incomplete and never resumed from. The manifest is the
contract the checkpoint tools (verify, list, surgery) read. Beside it, once the save is published, the
watchdog's verifier writes ``verified.json`` (``trainer.verified``): what a hash of each file found, so that a
resume trusts those files by their size, mtime and inode instead of reading them again.

Besides the files, the manifest records what the trainer applied (``trainer.train`` passes it as info):
``step``, ``consumed_samples`` (the data position: a rollback's skip range starts at its target's), the
``skip_ranges`` applied (a resume applies the union of these and ``control/skip-ranges``, so a lost or
edited file never silently un-skips data), and the *lineage*.

Lineage: the identity of the training trajectory whose weights a checkpoint holds. ``lineage`` is an id;
``lineage_history`` lists the forks that led to it (newest last: ``{"lineage", "from", "step", "why"}``).
A fresh run starts a new (random) lineage. A resume continues the checkpoint's lineage only when it
replays exactly what was trained: it resumes from a trainer-written tag (``global_step<N>``, not a surgery
copy), no newer checkpoint of the run is left behind it (no rewind: a rollback, manual or automatic, and a
fall-back past a damaged ``latest`` are rewinds), and it applies the same skip ranges. Otherwise, and
whenever the skip ranges change mid-run, the lineage forks: a new id derived from the parent's, the tag
and the ranges (deterministic, so two replays of the same fork agree).

Saving a step that exists already keeps the existing copy only if it verifies (hashes) and has the same
lineage: then it holds the same trajectory's state. Otherwise (damaged, another lineage, or no lineage
recorded) the existing copy is set aside, never deleted, under ``checkpoints/.superseded/<tag>-<time>/``
(recorded in ``telemetry/checkpoints.jsonl``), and the new save is published in its place. Every rename
that publishes or sets aside is followed by an fsync of the folders it changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainer import rundir
from trainer.rundir import RunDir, append_jsonl, atomic_write_text, fsync_dir

MANIFEST = rundir.MANIFEST
NOT_CONTENT = (MANIFEST, rundir.VERIFIED)
"""Files of a tag directory about the checkpoint, not of it: never in the manifest, never copied to a new tag."""
MANIFEST_FORMAT = 1
PARTIAL_PREFIX = rundir.PARTIAL_PREFIX
SUPERSEDED = ".superseded"
"""Where a save sets aside the existing checkpoint of its step that it replaces (damaged, or of another
lineage): ``checkpoints/.superseded/<tag>-<time>/``, kept as evidence, never pruned."""
LEGACY_DAMAGED = ".damaged"
"""The same, as older versions named it (read by the inventory, never written)."""
LINEAGE_HISTORY_MAX = 100
UNIVERSAL = "universal"
"""The manifest key of a DeepSpeed universal checkpoint (``bigops ckpt reshape``): {source_tag,
source_topology, rng}. The trainer resumes from it with DeepSpeed's universal loading."""
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class CheckpointError(Exception):
    """A checkpoint that is missing, incomplete, damaged or incompatible; the message is one line."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def check_tag(tag: str) -> str:
    """Refuse tags that could escape the checkpoints folder or hide (``../x``, ``.partial-...``)."""
    if not _TAG_RE.match(tag) or ".." in tag:
        raise CheckpointError(f"invalid checkpoint tag {tag!r}: use letters, digits, '_', '-', '.'")
    return tag


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
        os.fsync(handle.fileno())  # the bytes we vouch for are on disk before the manifest is
    return digest.hexdigest()


def hash_threads() -> int:
    """Files hashed at once: hashlib releases the GIL on large blocks, so threads use several cores (and keep
    several reads in flight on a parallel filesystem)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def _parallel_hashes(paths: list[Path], on_done: Callable[[Path], None] | None = None) -> list[str]:
    """sha256 of each path, largest first over ``hash_threads()`` threads; ``on_done(path)`` after each (from
    the hashing thread: a progress display)."""
    def one(path: Path) -> str:
        digest = sha256_file(path)
        if on_done is not None:
            on_done(path)
        return digest

    if len(paths) <= 1:
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor
    largest_first = sorted(range(len(paths)), key=lambda i: -paths[i].stat().st_size)
    with ThreadPoolExecutor(max_workers=hash_threads()) as pool:
        digests = dict(zip(largest_first, pool.map(lambda i: one(paths[i]), largest_first)))
    return [digests[i] for i in range(len(paths))]


def write_manifest(directory: Path, tag: str, info: dict[str, Any],
                   known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Hash every file under ``directory`` and write ``manifest.json`` last (atomically).

    ``known``: {relative path: {"size", "sha256"}} already established for files whose bytes the caller
    vouches for (hashed while written, or hard links to a verified file); used when the size still matches.
    """
    known = known or {}
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in NOT_CONTENT)
    files: dict[str, dict[str, Any]] = {}
    to_hash = []
    for path in paths:
        rel = path.relative_to(directory).as_posix()
        size = path.stat().st_size
        meta = known.get(rel)
        if isinstance(meta, dict) and meta.get("size") == size and isinstance(meta.get("sha256"), str):
            files[rel] = {"size": size, "sha256": meta["sha256"]}
        else:
            to_hash.append((rel, path, size))
    for (rel, _, size), digest in zip(to_hash, _parallel_hashes([p for _, p, _ in to_hash])):
        files[rel] = {"size": size, "sha256": digest}
    files = dict(sorted(files.items()))
    manifest = {"format": MANIFEST_FORMAT, "tag": tag, "created": time.time(), **info, "files": files}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")  # + dir fsync
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {MANIFEST}: the checkpoint is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory / MANIFEST} is unreadable ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{directory / MANIFEST} is not a bigops manifest")
    return manifest


def verify(directory: Path, hashes: bool = True) -> list[str]:
    """Problems found in a checkpoint (empty: complete and intact): missing, truncated, altered files."""
    try:
        manifest = read_manifest(directory)
    except CheckpointError as exc:
        return [str(exc)]
    problems = []
    to_hash = []
    for rel, meta in sorted(manifest["files"].items()):
        path = directory / rel
        if not isinstance(meta, dict):
            problems.append(f"{rel}: bad manifest entry")
        elif not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta.get("size"):
            problems.append(f"{rel}: size {path.stat().st_size} != {meta.get('size')} (truncated or altered)")
        elif hashes:
            to_hash.append((rel, path, meta.get("sha256")))
    for (rel, _, expected), digest in zip(to_hash, _parallel_hashes([p for _, p, _ in to_hash])):
        if digest != expected:
            problems.append(f"{rel}: sha256 differs (altered)")
    return sorted(problems)


def supersede_reason(existing: Path, info: dict[str, Any]) -> str | None:
    """Why a save must replace the existing checkpoint of its step (None: keep it, it holds the same state).
    Its verified stamp spares re-hashing the files it vouches for (``trainer.verified``)."""
    from trainer import verified
    problems = verified.verify_and_stamp(existing, verified.who("trainer"), everything=False).problems
    if problems:
        return f"damaged ({problems[0]})"
    old, new = read_manifest(existing).get("lineage"), info.get("lineage")
    if not isinstance(new, str) or not isinstance(old, str):
        return "no lineage recorded to show it holds the same state"
    if old != new:
        return f"another lineage ({old}, the new save is {new})"
    return None


def set_aside(run: RunDir, path: Path, tag: str, why: str) -> Path:
    """Move a checkpoint to ``.superseded/<tag>-<time>/`` (atomic, durable); record and say it."""
    root = run.checkpoints / SUPERSEDED
    root.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = root / f"{tag}-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = root / f"{tag}-{stamp}.{n}"
    os.replace(path, aside)
    fsync_dir(root)
    fsync_dir(path.parent)
    append_jsonl(run.checkpoint_log, {"kind": "superseded", "tag": tag, "time": time.time(),
                                                       "aside": aside.relative_to(run.checkpoints).as_posix(),
                                                       "why": why})
    print(f"warning: checkpoint {tag} existed ({why}): set aside as {aside}, the new save replaces it",
          file=sys.stderr, flush=True)
    return aside


def publish(run: RunDir, partial: Path, tag: str, info: dict[str, Any]) -> Path:
    """Steps 2-4 of a save, on one process after all ranks wrote ``partial``."""
    final = run.checkpoint(tag)
    write_manifest(partial, tag, info)
    if final.exists():
        # Only when re-saving a step that exists (a replay after a rollback or a crash). The existing copy is
        # kept only if intact and of the same lineage (the same state); else set aside, never deleted.
        why = supersede_reason(final, info)
        if why is None:
            shutil.rmtree(partial)
            atomic_write_text(run.latest, tag + "\n")
            return final
        set_aside(run, final, tag, why)
    os.replace(partial, final)
    fsync_dir(run.checkpoints)
    atomic_write_text(run.latest, tag + "\n")
    return final


# ------------------------------------------------------------------------------ what a checkpoint applied
def consumed_samples_of(path: Path) -> int | None:
    """The data position a checkpoint was saved at (its manifest's ``consumed_samples``), None if unknown."""
    try:
        value = read_manifest(Path(path)).get("consumed_samples")
    except CheckpointError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def skip_ranges_of(manifest: dict[str, Any]) -> list[tuple[int, int]]:
    """The skip ranges a checkpoint applied ([] for one written before they were recorded)."""
    ranges = manifest.get("skip_ranges")
    if ranges is None:
        return []
    ok = isinstance(ranges, list) and all(
        isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in r) and 0 <= r[0] < r[1] for r in ranges)
    if not ok:
        raise CheckpointError(f"checkpoint {manifest.get('tag')}: its manifest's skip_ranges is not a list of "
                              f"[start, end] pairs")
    return sorted((int(a), int(b)) for a, b in ranges)


def _merged(ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def derive_lineage(parent: str, origin: str, ranges) -> str:
    """The id of a fork: a function of the parent lineage, where it forked and the skip ranges applied."""
    text = json.dumps({"parent": parent, "from": origin, "skip_ranges": [list(r) for r in ranges]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _provenance(lineage: str, history: list, ranges, fork: dict | None) -> dict[str, Any]:
    history = list(history) + ([fork] if fork else [])
    return {"lineage": lineage, "lineage_history": history[-LINEAGE_HISTORY_MAX:],
            "skip_ranges": [[int(a), int(b)] for a, b in ranges]}


def provenance_at_start(run: RunDir, resumable: Resumable | None, applied) -> dict[str, Any]:
    """Manifest info of the saves to come: lineage (continued or forked, see the module docstring) and the
    skip ranges applied. Rank 0, after the resume point and the skip ranges are known."""
    applied = sorted((int(a), int(b)) for a, b in applied)
    if resumable is None:
        lineage = secrets.token_hex(8)
        return _provenance(lineage, [], applied, {"lineage": lineage, "from": None, "step": 0, "why": "fresh start"})
    manifest = resumable.manifest
    step = manifest.get("step") if isinstance(manifest.get("step"), int) else step_of(resumable.tag)
    parent = manifest.get("lineage")
    history = manifest.get("lineage_history")
    history = history if isinstance(history, list) else []
    why = []
    if not isinstance(parent, str):
        why.append("the checkpoint records no lineage")
    if resumable.tag != tag_for(step):
        why.append(f"{resumable.tag} is not a trainer save (surgery or a copy)")
    newer = [t for t in complete_tags(run) if step_of(t) > step]
    if newer:
        why.append(f"rewinds past {newer[-1]}")
    if _merged(skip_ranges_of(manifest)) != _merged(applied):
        why.append("the skip ranges changed")
    if not why:
        return _provenance(parent, history, applied, None)
    lineage = derive_lineage(parent if isinstance(parent, str) else f"unrecorded:{resumable.tag}",
                             resumable.tag, applied)
    return _provenance(lineage, history, applied, {"lineage": lineage, "from": resumable.tag, "step": step,
                                                   "why": "; ".join(why)})


def provenance_after_skip_change(provenance: dict[str, Any], step: int, applied) -> dict[str, Any]:
    """Mid-run, the skip ranges changed at ``step``: the trajectory forks from here."""
    applied = sorted((int(a), int(b)) for a, b in applied)
    parent = provenance.get("lineage") or "unrecorded"
    lineage = derive_lineage(parent, f"step{step}", applied)
    return _provenance(lineage, provenance.get("lineage_history") or [], applied,
                       {"lineage": lineage, "from": None, "step": step, "why": "the skip ranges changed mid-run"})


def partial_dir(run: RunDir, tag: str) -> Path:
    return run.partial(tag)


@dataclass(frozen=True)
class Resumable:
    tag: str
    path: Path
    manifest: dict[str, Any]
    fell_back_from: str | None = None
    """The tag ``latest`` named when it was unusable and an older checkpoint was chosen instead."""
    reason: str | None = None


def refuse_foreign(path: Path) -> None:
    """A checkpoint Megatron-DeepSpeed wrote itself holds no bigops state to resume (manifest, run config,
    consumed samples, RNG): say so, and how to start from its weights, rather than calling it incomplete."""
    from trainer import megatron
    if path.is_dir() and not megatron.has_manifest(path):
        try:
            foreign = not megatron.written_by_bigops(megatron.read_engine(path))
        except CheckpointError:
            return
        if foreign:
            raise CheckpointError(f"{path} was written by Megatron-DeepSpeed, not bigops: a run cannot resume "
                                  f"from it; start a new run from its weights with --init-megatron {path}")


def is_universal(resumable: "Resumable | None") -> bool:
    """Is the checkpoint to resume from a universal one (written by ``bigops ckpt reshape``)?"""
    return resumable is not None and isinstance(resumable.manifest.get(UNIVERSAL), dict)


def step_of(tag: str) -> int:
    match = re.search(r"(\d+)$", tag)
    return int(match.group(1)) if match else -1


def complete_tags(run: RunDir) -> list[str]:
    """Tags of checkpoint directories (not partial ones), oldest step first."""
    if not run.checkpoints.is_dir():
        return []
    tags = [p.name for p in run.checkpoints.iterdir()
            if p.is_dir() and not p.name.startswith(".") and _TAG_RE.match(p.name)]
    return sorted(tags, key=lambda t: (step_of(t), t))


def find_resumable(run: RunDir, hashes: bool = True,
                   checker: Callable[[Path], list[str]] | None = None) -> Resumable | None:
    """The checkpoint to resume from: ``latest`` if it verifies, else the newest older one that does.

    None when the run has no checkpoint at all. Raises :class:`CheckpointError` when ``latest`` is
    unreadable or names nothing, or when no checkpoint verifies. ``checker(path)``: the problems of a
    checkpoint (default: :func:`verify` with ``hashes``); the trainer and the watchdog pass one that trusts
    the verified stamp (``trainer.verified``).
    """
    checker = checker or (lambda p: verify(p, hashes=hashes))
    try:
        raw = run.latest.read_bytes()
    except FileNotFoundError:
        return None
    try:
        tag = check_tag(raw.decode("ascii").strip())
    except (UnicodeDecodeError, CheckpointError):
        raise CheckpointError(f"{run.latest} is corrupt (it should hold one checkpoint tag): fix or remove it "
                              f"after checking `ls {run.checkpoints}`") from None
    path = run.checkpoint(tag)
    problems = checker(path) if path.is_dir() else [f"{path} does not exist"]
    if not problems:
        return Resumable(tag, path, read_manifest(path))
    refuse_foreign(path)
    for older in reversed(complete_tags(run)):
        if step_of(older) >= step_of(tag) or older == tag:
            continue
        older_path = run.checkpoint(older)
        if not checker(older_path):
            return Resumable(older, older_path, read_manifest(older_path), fell_back_from=tag, reason=problems[0])
    raise CheckpointError(f"latest checkpoint {tag} is unusable ({problems[0]}) and no older one verifies")
