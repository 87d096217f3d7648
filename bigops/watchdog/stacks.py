"""Hang forensics: the Python stacks of every rank, with py-spy, kept in the run directory before anything
is killed; identical stacks grouped, the rank(s) whose stack differs named.

BLOOM-176B's team found a 3-hour evaluation deadlock by running py-spy on 48 nodes by hand. A hung rank is
the evidence: the supervisor dumps every rank's stacks *before* it kills a hang (and at once when it only
notifies or asks), ``bigops stacks RUN`` does it on demand.

- :func:`dump_pid` runs ``py-spy dump --json --pid P`` (an argument list, no shell; py-spy attaches with
  ptrace), a few tries: right after a process starts py-spy may not find its interpreter yet, and a
  SIGSTOPped process is read with ``--nonblocking`` (it cannot be paused, and stopped it does not move);
- :func:`group` (pure) groups ranks by their main thread's frames (function, file, line), largest group first;
- :func:`dump_ranks` writes ``watchdog/stacks/<time>-<reason>/rank-<r>.json`` (py-spy's own JSON, or the
  error) and ``summary.json`` (the groups), atomically; :func:`summary_line` is what a page says.

Locally the ranks' pids are in their heartbeats; on SLURM the same dump runs on each node through
``srun --overlap`` (the chain keeper's part, not done here yet).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.rundir import STACK_DUMP, STACK_SUMMARY, RunDir, atomic_write_text

PY_SPY_TIMEOUT_S = 30.0
TRIES = 3


@dataclass(frozen=True)
class Group:
    """Ranks whose main thread stands in the same frames (innermost first)."""

    ranks: tuple[int, ...]
    frames: tuple[tuple[str, str, int], ...]
    """(function, file, line), innermost first; () when the stack could not be read."""

    @property
    def where(self) -> str:
        if not self.frames:
            return "stack unreadable"
        name, filename, line = self.frames[0]
        return f"{name} ({Path(filename).name}:{line})"


def py_spy() -> str | None:
    """The py-spy executable: beside this Python (a virtualenv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def dump_pid(pid: int, timeout: float = PY_SPY_TIMEOUT_S, tries: int = TRIES) -> dict:
    """{"threads": py-spy's JSON} or {"error": one line}: never raises for a process it cannot read."""
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    error = ""
    for attempt in range(tries):
        # py-spy pauses the process to read it (ptrace); a SIGSTOPped rank cannot be paused ("Failed to get
        # stack traces") but, stopped, is read as it stands without pausing: the second try is --nonblocking
        nonblocking = attempt % 2 == 1
        try:
            done = subprocess.run([exe, "dump", "--json", *(["--nonblocking"] if nonblocking else []),
                                   "--pid", str(pid)], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            error = f"py-spy did not answer within {timeout:g} s"
            continue
        if done.returncode == 0:
            try:
                return {"threads": json.loads(done.stdout), **({"nonblocking": True} if nonblocking else {})}
            except ValueError:
                error = "py-spy printed no JSON"
        else:
            error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0][:300]
        time.sleep(0.2 * (attempt + 1))
    return {"error": error}


def main_frames(dump: dict) -> tuple[tuple[str, str, int], ...]:
    """The main thread's frames (innermost first): the thread whose OS id is the process id, else the first."""
    threads = dump.get("threads") or []
    if not threads:
        return ()
    main = next((t for t in threads if t.get("os_thread_id") == t.get("pid")), threads[0])
    return tuple((str(f.get("name")), str(f.get("filename")), int(f.get("line") or 0))
                 for f in main.get("frames") or [])


def group(dumps: dict[int, dict]) -> list[Group]:
    """Ranks by identical main-thread stacks, the largest group first (ties: lowest rank first)."""
    by_stack: dict[tuple, list[int]] = {}
    for rank in sorted(dumps):
        by_stack.setdefault(main_frames(dumps[rank]), []).append(rank)
    groups = [Group(tuple(ranks), frames) for frames, ranks in by_stack.items()]
    return sorted(groups, key=lambda g: (-len(g.ranks), g.ranks[0]))


def odd_ranks(groups: list[Group]) -> list[int]:
    """The ranks outside the largest group (none when all agree or there is one rank)."""
    return sorted(r for g in groups[1:] for r in g.ranks)


def summary_line(groups: list[Group], where: Path | None = None) -> str:
    """What the page says: how the ranks split, the odd ones named with the frame they stand in."""
    if not groups:
        return "no rank stacks"
    total = sum(len(g.ranks) for g in groups)
    head = f"stacks of {total} rank(s)" + (f" in {where}" if where else "")
    if len(groups) == 1:
        return f"{head}: all in {groups[0].where}"
    odd = "; ".join(f"rank {', '.join(map(str, g.ranks))} in {g.where}" for g in groups[1:])
    return f"{head}: {len(groups[0].ranks)} in {groups[0].where}; differs: {odd}"


def dump_ranks(run: RunDir, pids: dict[int, int], reason: str, now: float | None = None) -> tuple[Path, list[Group]]:
    """Dump every rank's stacks into a new folder under ``watchdog/stacks/``; (the folder, the groups)."""
    now = time.time() if now is None else now
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in reason)[:40].strip("-") or "dump"
    folder = run.stacks / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{label}"
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{n}")
    folder.mkdir(parents=True)
    dumps = {rank: {"rank": rank, "pid": pid, **dump_pid(pid)} for rank, pid in sorted(pids.items())}
    for rank, dump in dumps.items():
        atomic_write_text(folder / STACK_DUMP.format(rank=rank), json.dumps(dump, indent=1) + "\n")
    groups = group(dumps)
    atomic_write_text(folder / STACK_SUMMARY, json.dumps({
        "time": now, "reason": reason, "odd_ranks": odd_ranks(groups),
        "groups": [{"ranks": list(g.ranks), "where": g.where, "frames": [list(f) for f in g.frames]} for g in groups],
        "errors": {str(r): d["error"] for r, d in dumps.items() if d.get("error")},
    }, indent=1) + "\n")
    return folder, groups
