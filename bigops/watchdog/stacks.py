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

The ranks' pids are in their heartbeats (:func:`live_pids`: this host's live ranks). On SLURM the dump runs
on every node of the running job at once, as a job step beside the ranks: ``srun --overlap --jobid=J
--ntasks-per-node=1 <python> -m bigops.watchdog.stacks RUN`` (:func:`srun_command`; through the chain's
runner, so over SSH too); each node dumps its own live ranks and prints one JSON line
(:func:`node_main`), :func:`collect_over_srun` joins them and names the ranks no node answered for.
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


def live_pids(run: RunDir, host: str | None = None) -> dict[int, int]:
    """rank -> pid of the ranks on ``host`` (default: this one) whose heartbeat names a live process."""
    import socket

    from trainer.rundir import pid_alive, read_heartbeats
    host = host or socket.gethostname()
    return {int(b["rank"]): b["pid"] for b in read_heartbeats(run).values()
            if b.get("host") == host and b.get("phase") != "exit" and isinstance(b.get("pid"), int)
            and not isinstance(b.get("pid"), bool) and pid_alive(b["pid"])}


def running_ranks(run: RunDir) -> dict[int, str]:
    """rank -> host of every rank whose last heartbeat is not an exit (any host: what a dump should cover)."""
    from trainer.rundir import read_heartbeats
    return {int(b["rank"]): str(b.get("host")) for b in read_heartbeats(run).values()
            if b.get("phase") != "exit" and isinstance(b.get("rank"), int)}


def dump_local(pids: dict[int, int]) -> dict[int, dict]:
    """rank -> {"rank", "pid", py-spy's dump or the error} for ranks on this host."""
    return {rank: {"rank": rank, "pid": pid, **dump_pid(pid)} for rank, pid in sorted(pids.items())}


def srun_command(job_id: str, python: str, run_root: str, workdir: str | None = None) -> list[str]:
    """One task on every node of the running job, beside its ranks (``--overlap``: no new resources), each
    dumping its node's ranks (:func:`node_main`). An argument list: nothing goes through a shell."""
    return ["srun", "--overlap", f"--jobid={job_id}", "--ntasks-per-node=1", "--kill-on-bad-exit=0",
            *([f"--chdir={workdir}"] if workdir else []), python, "-m", "bigops.watchdog.stacks", run_root]


def collect_over_srun(runner, job_id: str, python: str, run: RunDir, workdir: str | None = None,
                      timeout: float = 3 * PY_SPY_TIMEOUT_S * TRIES) -> dict[int, dict]:
    """Every rank's dump from the nodes of ``job_id`` (:func:`srun_command` through ``runner``); a rank no
    node answered for gets an error naming its host. Raises CommandError when srun itself fails."""
    from launcher.slurm.runner import CommandError
    result = runner.run(srun_command(job_id, python, str(run.root), workdir), timeout=timeout)
    dumps: dict[int, dict] = {}
    for line in result.stdout.splitlines():
        try:
            node = json.loads(line)
        except ValueError:
            continue  # srun's own chatter
        if isinstance(node, dict) and isinstance(node.get("dumps"), dict):
            for rank, dump in node["dumps"].items():
                dumps[int(rank)] = {**dump, "host": node.get("host")}
    if not dumps and not result.ok:
        raise CommandError(f"srun --overlap into job {job_id} failed ({result.returncode}): "
                           f"{(result.stderr.strip().splitlines() or [''])[-1][:300]}")
    for rank, host in running_ranks(run).items():
        dumps.setdefault(rank, {"rank": rank, "host": host, "error": f"no node of job {job_id} answered for it "
                                                                      f"(host {host})"})
    return dumps


def dump_slurm_job(run: RunDir) -> dict[int, dict] | None:
    """Every rank's dump from the chain's running job (None when none is running); BigopsError (one line)
    when SLURM or the SSH link does not answer."""
    from bigops.errors import BigopsError
    from launcher.remote import runner_for
    from launcher.slurm import chain as chain_mod
    from launcher.slurm.runner import CommandError, LocalRunner
    from trainer.rundir import load_run_config

    try:
        chain = chain_mod.Chain.load(LocalRunner(), str(run.root))
    except (OSError, ValueError) as exc:
        raise BigopsError(f"{run.chain_record}: {exc}") from None
    if chain is None:
        return None
    cfg = load_run_config(run, missing_ok=True)
    try:
        runner = runner_for(chain.host, chain.key_file, chain.known_hosts)
        running = [j for j in chain_mod.queue(runner, chain) if j.running]
        if not running:
            return None
        return collect_over_srun(runner, running[0].job_id, cfg.slurm.python, run, cfg.slurm.workdir)
    except CommandError as exc:
        raise BigopsError(f"stacks over SLURM: {exc}") from None


def node_main(argv: list[str] | None = None) -> int:
    """``python -m bigops.watchdog.stacks RUN``: this node's live ranks of RUN, dumped, as one JSON line."""
    import socket
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bigops.watchdog.stacks RUN_DIR", file=sys.stderr)
        return 2
    host = socket.gethostname()
    dumps = dump_local(live_pids(RunDir(Path(args[0])), host))
    print(json.dumps({"host": host, "dumps": {str(r): d for r, d in dumps.items()}}), flush=True)
    return 0


def dump_ranks(run: RunDir, pids: dict[int, int], reason: str, now: float | None = None) -> tuple[Path, list[Group]]:
    """Dump every rank's stacks (``pids``: this host's) into a new folder under ``watchdog/stacks/``; (the
    folder, the groups)."""
    return write_dumps(run, dump_local(pids), reason, now)


def write_dumps(run: RunDir, dumps: dict[int, dict], reason: str,
                now: float | None = None) -> tuple[Path, list[Group]]:
    """Keep ``dumps`` (rank -> dump) in a new folder under ``watchdog/stacks/``; (the folder, the groups)."""
    now = time.time() if now is None else now
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in reason)[:40].strip("-") or "dump"
    folder = run.stacks / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{label}"
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{n}")
    folder.mkdir(parents=True)
    for rank, dump in dumps.items():
        atomic_write_text(folder / STACK_DUMP.format(rank=rank), json.dumps(dump, indent=1) + "\n")
    groups = group(dumps)
    atomic_write_text(folder / STACK_SUMMARY, json.dumps({
        "time": now, "reason": reason, "odd_ranks": odd_ranks(groups),
        "groups": [{"ranks": list(g.ranks), "where": g.where, "frames": [list(f) for f in g.frames]} for g in groups],
        "errors": {str(r): d["error"] for r, d in dumps.items() if d.get("error")},
    }, indent=1) + "\n")
    return folder, groups


if __name__ == "__main__":
    sys.exit(node_main())
