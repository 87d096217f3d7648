"""Atomic checkpoints: DeepSpeed's layout, a manifest, a rename, and only then ``latest``.

Save, in this order (a crash at any instant leaves the previous checkpoint as ``latest``):

1. every rank writes its DeepSpeed files into ``checkpoints/.partial-<tag>/``;
2. rank 0 hashes every file (sha256 + size, fsync'ing each) into ``manifest.json``, written last;
3. rank 0 renames ``.partial-<tag>`` to ``<tag>`` (atomic on one filesystem);
4. rank 0 replaces ``checkpoints/latest`` atomically (temp + rename).

A tag directory without a valid manifest is incomplete and never resumed from. The manifest is the
contract the checkpoint tools (verify, list, surgery) read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.rundir import RunDir, atomic_write_text, fsync_dir

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PARTIAL_PREFIX = ".partial-"
DAMAGED = ".damaged"
"""Where a save puts a damaged checkpoint of the same step that it replaces (kept as evidence)."""
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


def _parallel_hashes(paths: list[Path]) -> list[str]:
    if len(paths) <= 1:
        return [sha256_file(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor
    largest_first = sorted(range(len(paths)), key=lambda i: -paths[i].stat().st_size)
    with ThreadPoolExecutor(max_workers=hash_threads()) as pool:
        digests = dict(zip(largest_first, pool.map(lambda i: sha256_file(paths[i]), largest_first)))
    return [digests[i] for i in range(len(paths))]


def write_manifest(directory: Path, tag: str, info: dict[str, Any],
                   known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Hash every file under ``directory`` and write ``manifest.json`` last (atomically).

    ``known``: {relative path: {"size", "sha256"}} already established for files whose bytes the caller
    vouches for (hashed while written, or hard links to a verified file); used when the size still matches.
    """
    known = known or {}
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
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


def publish(run: RunDir, partial: Path, tag: str, info: dict[str, Any]) -> Path:
    """Steps 2-4 of a save, on one process after all ranks wrote ``partial``."""
    final = run.checkpoint(tag)
    write_manifest(partial, tag, info)
    if final.exists():
        # Only possible when re-saving a step that exists already (e.g. a stop right after a resume, or a
        # replay after a crash). An intact copy holds the same state: keep it, drop the new one. A damaged
        # one (truncated, bit-flipped) is set aside — never deleted — and the fresh save takes its place.
        if not verify(final, hashes=True):
            shutil.rmtree(partial)
            atomic_write_text(run.latest, tag + "\n")
            return final
        aside = run.checkpoints / DAMAGED / f"{tag}-{int(time.time())}"
        aside.parent.mkdir(exist_ok=True)
        os.replace(final, aside)
    os.replace(partial, final)
    fsync_dir(run.checkpoints)
    atomic_write_text(run.latest, tag + "\n")
    return final


def partial_dir(run: RunDir, tag: str) -> Path:
    return run.checkpoints / f"{PARTIAL_PREFIX}{tag}"


@dataclass(frozen=True)
class Resumable:
    tag: str
    path: Path
    manifest: dict[str, Any]
    fell_back_from: str | None = None
    """The tag ``latest`` named when it was unusable and an older checkpoint was chosen instead."""
    reason: str | None = None


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


def find_resumable(run: RunDir, hashes: bool = True) -> Resumable | None:
    """The checkpoint to resume from: ``latest`` if it verifies, else the newest older one that does.

    None when the run has no checkpoint at all. Raises :class:`CheckpointError` when ``latest`` is
    unreadable or names nothing, or when no checkpoint verifies.
    """
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
    problems = verify(path, hashes=hashes) if path.is_dir() else [f"{path} does not exist"]
    if not problems:
        return Resumable(tag, path, read_manifest(path))
    for older in reversed(complete_tags(run)):
        if step_of(older) >= step_of(tag) or older == tag:
            continue
        older_path = run.checkpoint(older)
        if not verify(older_path, hashes=hashes):
            return Resumable(older, older_path, read_manifest(older_path), fell_back_from=tag, reason=problems[0])
    raise CheckpointError(f"latest checkpoint {tag} is unusable ({problems[0]}) and no older one verifies")
