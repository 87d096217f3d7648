"""Ranks not running: the heartbeats name processes on this host that are gone, while nobody said the run
ended (``telemetry/exit.json`` with a clean code) and no supervisor is restarting it.

For ``bigops watch`` on its own (without ``bigops launch --watch``): a rank killed by the OOM killer or a
node problem is reported at once, not after the hang timeout. Pure: the liveness check is injected.
"""

from __future__ import annotations

from typing import Callable

from bigops.watchdog.findings import Finding
from trainer import exitcodes

CLEAN_EXITS = (exitcodes.FINISHED, exitcodes.STOPPED_ON_REQUEST, exitcodes.STOPPED_BY_SIGNAL)
EXIT_RECORD_SLACK_S = 5.0
"""An exit record older than the gone ranks' last heartbeats by more than this is from an earlier job."""


def detect_dead_ranks(heartbeats: dict[int, dict], host: str, alive: Callable[[int], bool],
                      exit_record: dict | None = None, restarting: bool = False) -> list[Finding]:
    """``exit_record``: telemetry/exit.json ({"code", "time", ...}) or None; ``restarting``: a supervisor
    owns the ranks (it restarts them itself)."""
    if restarting:
        return []
    gone = []
    for rank, beat in sorted(heartbeats.items()):
        pid = beat.get("pid")
        if beat.get("host") != host or beat.get("phase") == "exit" or not isinstance(pid, int) \
                or isinstance(pid, bool) or pid <= 0:
            continue
        if not alive(pid):
            gone.append({"rank": rank, "pid": pid, "phase": beat.get("phase"), "step": beat.get("step"),
                         "time": beat.get("time")})
    if not gone:
        return []
    code = None
    if isinstance(exit_record, dict) and isinstance(exit_record.get("time"), (int, float)):
        oldest = min(float(g["time"]) for g in gone if isinstance(g["time"], (int, float))) \
            if any(isinstance(g["time"], (int, float)) for g in gone) else 0.0
        if exit_record["time"] >= oldest - EXIT_RECORD_SLACK_S:
            code = exit_record.get("code")
    if code in CLEAN_EXITS:
        return []
    names = ", ".join(f"rank {g['rank']} (pid {g['pid']}, {g['phase']}, step {g['step']})" for g in gone[:8])
    more = f" and {len(gone) - 8} more" if len(gone) > 8 else ""
    why = f"; the run recorded exit code {code} ({exitcodes.describe(code)})" if isinstance(code, int) else \
        "; no exit recorded, nothing restarts them"
    everyone = len(gone) == len([b for b in heartbeats.values() if b.get("host") == host and b.get("phase") != "exit"])
    return [Finding("RanksNotRunning", "critical",
                    f"{'all ranks' if everyone else f'{len(gone)} rank(s)'} on {host} not running: {names}{more}{why}",
                    key="RanksNotRunning:" + ",".join(str(g["pid"]) for g in gone),
                    step=max((g["step"] for g in gone if isinstance(g["step"], int)), default=None),
                    evidence={"host": host, "gone": gone, "exit_code": code})]
