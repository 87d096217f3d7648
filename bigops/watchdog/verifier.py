"""The watchdog's checkpoint verifier: each new ``latest`` is hashed once, in a background thread, and stamped.

The run's writer (the supervisor of ``bigops launch --watch``, or the ``bigops watch`` that holds the writer
lock) calls :meth:`Verifier.poll` every pass. It costs the pass one read of ``checkpoints/latest`` and one
``stat`` of the manifest; when ``latest`` names a checkpoint it has not verified yet it starts a thread that
hashes the files its stamp does not vouch for (``trainer.verified.verify_and_stamp``) and records the stamp,
and a ``verify`` record in ``telemetry/checkpoints.jsonl``. The pass never waits for it.

Why the watchdog and not a thread of the trainer's rank 0:

- it is off the training path: no rank's CPU, memory bandwidth or interpreter lock (hashing is ~1 core per
  GB/s, in a thread at nice 19 so that ranks on the same host come first), and no rank ever waits for it;
- it outlives the ranks: a crash or a kill during the verification loses nothing of a check half done by a
  process that died, and the supervisor that relaunches is the process that holds the result;
- one process per run holds the writer lock: observers never write into checkpoints.

A checkpoint is read once more, by the ops host, hours apart at BLOOM's save interval. Until the stamp is
there (or without a watchdog), a resume hashes the unvouched files on the ranks, each its own share
(``trainer.resume_check``); the supervisor's pre-launch check (:meth:`Verifier.before_launch`) hashes only
what changed since the stamp, and a whole checkpoint only below ``PRELAUNCH_HASH_BYTES``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from trainer import checkpoint as ckpt
from trainer import verified
from trainer.rundir import RunDir, append_jsonl

PRELAUNCH_HASH_BYTES = 256 << 20
"""Before a launch, the supervisor hashes a checkpoint's unvouched files itself only up to this many bytes (about
a second of one process): below it, finding the damage before the launch (set aside, one page) costs less than
the ranks finding it; above it, the ranks hash their own files in parallel (``trainer.resume_check``)."""


class Verifier:
    """Hash each new ``latest`` once, in a background thread (see the module docstring)."""

    def __init__(self, run: RunDir, role: str = "watchdog"):
        self.run, self.role = run, role
        self.thread: threading.Thread | None = None
        self.busy: Path | None = None
        """The checkpoint the thread hashes now."""
        self.done: dict[str, int] = {}
        """{tag: the manifest's mtime_ns} verified (or found damaged) by this process."""
        self.last: verified.Check | None = None
        self.lock = threading.Lock()

    def _key(self, path: Path) -> int | None:
        try:
            return (path / ckpt.MANIFEST).stat().st_mtime_ns
        except OSError:
            return None

    def poll(self) -> str | None:
        """One pass: start verifying ``latest`` if it is new to us. Returns the tag being verified, if any."""
        if self.thread is not None and self.thread.is_alive():
            return self.busy.name if self.busy else None
        tag = self.run.latest_tag()
        if not tag:
            return None
        try:
            path = self.run.checkpoint(ckpt.check_tag(tag))
        except ckpt.CheckpointError:
            return None
        key = self._key(path)
        if key is None or self.done.get(tag) == key:
            return None
        self.busy = path
        self.thread = threading.Thread(target=self._verify, args=(path, key), name=f"verify-{tag}", daemon=True)
        self.thread.start()
        return tag

    def _verify(self, path: Path, key: int) -> None:
        try:  # Linux: nice is per thread (and inherited by the hashing threads): ranks on this host come first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        started = time.perf_counter()
        try:
            result = verified.verify_and_stamp(path, verified.who(self.role), everything=False)
        except OSError:  # moved aside or pruned meanwhile: verified again if it is still latest next pass
            return
        finally:
            self.busy = None
        with self.lock:
            self.done[path.name] = key
            self.last = result
        if not result.bytes_hashed and not result.problems:
            return  # the stamp vouched for every file already (``bigops ckpt verify``, a resume's check)
        try:
            append_jsonl(self.run.checkpoint_log, {
                "kind": "verify", "tag": path.name, "time": time.time(), "by": self.role,
                "seconds": round(time.perf_counter() - started, 3), "bytes_hashed": result.bytes_hashed,
                "ok": result.fully_verified, "problems": result.problems[:20]})
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> None:
        """Until the running verification (if any) is done (tests, and a supervisor that exits)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def before_launch(self, path: Path) -> list[str]:
        """The supervisor's check of a checkpoint before it launches ranks on it: sizes and the stamp, and the
        unvouched files hashed only if they total at most ``PRELAUNCH_HASH_BYTES`` (a verification of this
        checkpoint already running is waited for then: it is the same read). No hashing beyond that: the
        ranks hash what is left, each its own files."""
        if self.busy == path and self.thread is not None:
            try:
                files = ckpt.read_manifest(path)["files"]
            except ckpt.CheckpointError:
                files = {}
            todo = verified.check(path).unverified
            if sum((files.get(rel) or {}).get("size", 0) for rel in todo) <= PRELAUNCH_HASH_BYTES:
                self.wait()
        return verified.verify_and_stamp(path, verified.who(f"{self.role} (before launch)"), everything=False,
                                         max_bytes=PRELAUNCH_HASH_BYTES).problems
