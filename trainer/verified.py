"""The verified stamp: a checkpoint is hashed once, and trusted afterwards by each file's size, mtime and inode.

``checkpoints/<tag>/verified.json`` (``trainer.rundir.VERIFIED``) records, for one manifest (its sha256), what a
hash of each file found and the file's identity when it was hashed::

    {"format": 1, "tag": "global_step20", "manifest_sha256": "...", "time": 1733338000.1, "by": "watchdog pid 7 on n1",
     "manifest_created": 1733337990.4, "result": "damaged",
     "files": {"layer_01-model_00-model_states.pt": {"size": 81234, "mtime_ns": ..., "ino": ..., "ok": true},
               "mp_rank_00_model_states.pt": {"size": ..., "mtime_ns": ..., "ino": ..., "ok": false,
                                              "problem": "mp_rank_00_model_states.pt: sha256 differs (altered)"}}}

Each file of the manifest is, by :func:`check`, one of:

- *ok*: the stamp says its hash matched, and its size, ``mtime_ns`` and inode are the ones it had then;
- *damaged*: the stamp says its hash did not match, and it has not changed since (a file that did is rechecked);
- *unverified*: no stamp (or one of another manifest), or the file changed since it was hashed: whoever needs
  it hashes it (the resume: each rank the files it loads, ``trainer.resume_check``).

A missing file or a size other than the manifest's is a problem whatever the stamp says (no hashing needed).
Writing a file updates its mtime, so a bit flip written after the stamp is rechecked; what a size/mtime/inode
check cannot see (a disk that rots a block in place, a write that restores the mtime) only a full re-hash finds:
``bigops ckpt verify`` re-hashes every file and refreshes the stamp.

The file's identity is taken before it is hashed and again after: a file that changed meanwhile is not stamped
(its hash says nothing about its bytes now). Stamps are merged, never trusted across manifests: two writers
(the watchdog's verifier and a resume) can only lose each other's entries, which makes files unverified again.
The stamp is written atomically (``trainer.rundir.atomic_write_text``) and never enters the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trainer.rundir import MANIFEST, VERIFIED, atomic_write_text

STAMP_FORMAT = 1
STAMP = VERIFIED


def file_id(path: Path) -> dict[str, int]:
    """What says a file is the one that was hashed: its size, mtime (ns) and inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def manifest_sha256(directory: Path) -> str | None:
    """The identity of a checkpoint's manifest (a stamp is valid for this manifest only)."""
    try:
        return hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def read(directory: Path) -> dict[str, Any] | None:
    """The stamp of ``directory`` if it belongs to its current manifest, else None (none, unreadable, stale)."""
    try:
        stamp = json.loads((Path(directory) / STAMP).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT or not isinstance(stamp.get("files"), dict):
        return None
    if stamp.get("manifest_sha256") != manifest_sha256(Path(directory)):
        return None
    return stamp


@dataclass
class Check:
    """What sizes and the stamp say of a checkpoint, without hashing."""

    problems: list[str] = field(default_factory=list)
    """Missing or wrongly sized files, and files the stamp found damaged (unchanged since): never resume."""
    unverified: list[str] = field(default_factory=list)
    """Files (relative paths) no valid stamp vouches for: hash them before trusting them."""
    verified: list[str] = field(default_factory=list)
    """Files the stamp vouches for (hash matched, unchanged since)."""
    refuted: list[str] = field(default_factory=list)
    """Files missing, or of another size than the manifest's (no hash needed to refuse them)."""
    stamp: dict[str, Any] | None = None
    bytes_hashed: int = 0
    """What :func:`verify_and_stamp` read to get here (0: sizes and the stamp said it all)."""

    @property
    def fully_verified(self) -> bool:
        return not self.problems and not self.unverified


def check(directory: Path, manifest: dict[str, Any] | None = None) -> Check:
    """Sizes against the manifest, then each file against the stamp (see the module docstring); no hashing."""
    from trainer.checkpoint import CheckpointError, read_manifest

    directory = Path(directory)
    try:
        manifest = manifest or read_manifest(directory)
    except CheckpointError as exc:
        return Check(problems=[str(exc)])
    stamp = read(directory)
    entries = stamp["files"] if stamp else {}
    out = Check(stamp=stamp)
    for rel, meta in sorted(manifest["files"].items()):
        path = directory / rel
        if not isinstance(meta, dict):
            out.problems.append(f"{rel}: bad manifest entry")
            out.refuted.append(rel)
            continue
        try:
            now = file_id(path)
        except FileNotFoundError:
            out.problems.append(f"{rel}: missing")
            out.refuted.append(rel)
            continue
        if now["size"] != meta.get("size"):
            out.problems.append(f"{rel}: size {now['size']} != {meta.get('size')} (truncated or altered)")
            out.refuted.append(rel)
            continue
        seen = entries.get(rel)
        if isinstance(seen, dict) and all(seen.get(k) == now[k] for k in now):
            if seen.get("ok") is True:
                out.verified.append(rel)
                continue
            if seen.get("ok") is False:
                out.problems.append(str(seen.get("problem") or f"{rel}: sha256 differs (altered)"))
                continue
        out.unverified.append(rel)
    out.problems.sort()
    return out


def hash_files(directory: Path, manifest: dict[str, Any], rels: list[str],
               on_done: Callable[[Path], None] | None = None) -> dict[str, dict[str, Any]]:
    """Hash ``rels`` (in parallel) against the manifest: {rel: {size, mtime_ns, ino, ok, problem?}}. A file that
    changed while it was hashed gets ``ok: None`` (nothing can be said of it: it is not stamped)."""
    from trainer.checkpoint import _parallel_hashes

    directory = Path(directory)
    before, present = {}, []
    results: dict[str, dict[str, Any]] = {}
    for rel in rels:
        try:
            before[rel] = file_id(directory / rel)
            present.append(rel)
        except FileNotFoundError:
            results[rel] = {"ok": False, "problem": f"{rel}: missing"}
    try:
        digests: list[str | None] = _parallel_hashes([directory / rel for rel in present], on_done)
    except OSError:  # one went away or became unreadable meanwhile: find which, never raise out of a check
        digests = [_digest_or_none(directory / rel) for rel in present]
    for rel, digest in zip(present, digests):
        meta = manifest["files"].get(rel) or {}
        try:
            after = file_id(directory / rel)
        except FileNotFoundError:
            after = None
        if digest is None:
            results[rel] = {**before[rel], "ok": None, "problem": f"{rel}: unreadable"}
        elif after != before[rel]:
            results[rel] = {**before[rel], "ok": None, "problem": f"{rel}: changed while it was being checked"}
        elif before[rel]["size"] != meta.get("size"):
            results[rel] = {**before[rel], "ok": False,
                            "problem": f"{rel}: size {before[rel]['size']} != {meta.get('size')} (truncated or altered)"}
        elif digest != meta.get("sha256"):
            results[rel] = {**before[rel], "ok": False, "problem": f"{rel}: sha256 differs (altered)"}
        else:
            results[rel] = {**before[rel], "ok": True}
    return results


def _digest_or_none(path: Path) -> str | None:
    from trainer.checkpoint import sha256_file
    try:
        return sha256_file(path)
    except OSError:
        return None


def problems_of(results: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(r["problem"] for r in results.values() if r.get("ok") is not True)


def who(role: str) -> str:
    return f"{role} pid {os.getpid()} on {socket.gethostname()}"


def record(directory: Path, results: dict[str, dict[str, Any]], by: str, seconds: float | None = None) -> bool:
    """Merge hash results into the stamp (entries of other manifests dropped) and write it atomically. False when
    the manifest is gone or unreadable (nothing written) or the folder is read-only.

    ``result`` sums it up: ``verified`` (every file of the manifest hashed and matched), ``damaged`` (one did
    not) or ``partial`` (some are not hashed yet)."""
    from trainer.checkpoint import CheckpointError, read_manifest, step_of

    directory = Path(directory)
    identity = manifest_sha256(directory)
    try:
        manifest = read_manifest(directory)
    except CheckpointError:
        return False
    if identity is None:
        return False
    old = read(directory)
    files = dict(old["files"]) if old else {}
    for rel, r in results.items():
        if r.get("ok") is None or "size" not in r:
            files.pop(rel, None)  # changed while hashed, or missing: nothing to vouch for
        else:
            files[rel] = {k: r[k] for k in ("size", "mtime_ns", "ino", "ok", "problem") if k in r}
    files = {rel: f for rel, f in files.items() if rel in manifest["files"]}
    if any(f.get("ok") is False for f in files.values()):
        result = "damaged"
    else:
        result = "verified" if set(files) == set(manifest["files"]) else "partial"
    stamp = {"format": STAMP_FORMAT, "tag": directory.name, "step": step_of(directory.name),
             "manifest_sha256": identity, "manifest_created": manifest.get("created"), "time": time.time(),
             "by": by, "result": result, "files": dict(sorted(files.items()))}
    if seconds is not None:
        stamp["seconds"] = round(seconds, 3)
    try:
        atomic_write_text(directory / STAMP, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    except OSError:
        return False
    return True


def verify_and_stamp(directory: Path, by: str, everything: bool = True, max_bytes: int | None = None,
                     on_start: Callable[[int, int], None] | None = None,
                     on_done: Callable[[Path], None] | None = None) -> Check:
    """Hash a checkpoint's files and record what was found. ``everything``: every file (``bigops ckpt verify``);
    else only the unverified ones, and only when they total at most ``max_bytes`` (None: any size). Returns the
    check after: problems (sizes, damaged) and what is still unverified. ``on_start(files, bytes)`` before the
    hashing, ``on_done(path)`` after each file (a progress display)."""
    from trainer.checkpoint import CheckpointError, read_manifest

    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except CheckpointError as exc:
        return Check(problems=[str(exc)])
    before = check(directory, manifest)
    if before.problems and not everything:
        return before  # refused by sizes or the stamp already: reading the rest would not change that
    if everything:  # every file of the manifest's size, whatever the stamp says (a damaged one may be repaired)
        todo = sorted(rel for rel in manifest["files"] if rel not in before.refuted)
    else:
        todo = before.unverified
    size = sum((manifest["files"].get(rel) or {}).get("size", 0) for rel in todo)
    if not todo or (max_bytes is not None and size > max_bytes):
        return before
    if on_start is not None:
        on_start(len(todo), size)
    started = time.perf_counter()
    results = hash_files(directory, manifest, todo, on_done)
    record(directory, results, by, time.perf_counter() - started)
    after = check(directory, manifest)
    after.problems = sorted(set(after.problems) | set(problems_of(results)))
    after.bytes_hashed = sum(r.get("size", 0) for r in results.values())
    return after
