"""``bigops status``: the state of a run on one screen (or as JSON for scripts)."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.table import Table

from bigops.cli.options import FormatOpt, OutputFormat, RunDirArg, existing_run


def _age(then: float | None, now: float) -> str:
    if not isinstance(then, (int, float)):
        return "-"
    seconds = now - then
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h ago"


def status(
    run_dir: RunDirArg,
    output_format: FormatOpt = OutputFormat.text,
) -> None:
    """Step, loss, throughput, checkpoint, ranks, GPUs and open problems of a run (read-only)."""
    from bigops.watchdog.approvals import command, waiting
    from bigops.watchdog.daemon import one_line
    from bigops.watchdog.scan import scan_run

    run = existing_run(run_dir)
    now = time.time()
    findings, facts = scan_run(run, now=now)
    problems = [f for f in findings if f.severity != "info"]
    pending = [{"id": e.get("id"), "action": e.get("action"), "reason": e.get("reason"), "time": e.get("time"),
                "approve": command(run, "approve", e["id"]), "deny": command(run, "deny", e["id"])}
               for e in waiting(run)]
    last = facts.get("last_record") or {}
    if output_format == OutputFormat.json:
        out = {k: v for k, v in facts.items() if k not in ("findings", "gpus")}
        out["problems"] = [f.as_dict() for f in problems]
        out["pending_approvals"] = pending
        out["gpus"] = {h: [s for s in samples if s["time"] == max(x["time"] for x in samples)]
                       for h, samples in (facts.get("gpus") or {}).items()}
        typer.echo(json.dumps(out, default=str))
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]{run.root}[/]  step {last.get('step', '-')}/{facts.get('target_step') or '-'}  "
                  f"loss {last.get('loss', float('nan')):.4f}  {last.get('tokens_per_second', 0):,.0f} tok/s  "
                  f"last step {_age(last.get('time'), now)}" if last else f"[bold]{run.root}[/]  no step recorded yet")
    console.print(f"checkpoint: {facts.get('latest_checkpoint') or 'none'} (step {facts.get('checkpoint_step', '-')}, "
                  f"{_age(facts.get('checkpoint_time'), now)})"
                  + (f"; validation loss {facts['last_val_loss']:.4f}" if facts.get("last_val_loss") else "")
                  + (f"; ln desync {facts['last_ln_desync']:.3g}" if facts.get("last_ln_desync") is not None else ""))
    beats = facts.get("heartbeats") or {}
    if beats:
        table = Table("rank", "host", "pid", "phase", "step", "heartbeat", title="ranks")
        for rank, b in sorted(beats.items()):
            table.add_row(str(rank), str(b.get("host")), str(b.get("pid")), str(b.get("phase")), str(b.get("step")),
                          _age(b.get("time"), now))
        console.print(table)
    for host, samples in sorted((facts.get("gpus") or {}).items()):
        latest = [s for s in samples if s["time"] == max(x["time"] for x in samples)]
        temps = [s["temperature_c"] for s in latest if s.get("temperature_c") is not None]
        console.print(f"gpus {host}: {len(latest)} visible, max {max(temps) if temps else '-'} C, sampled "
                      f"{_age(latest[0]['time'], now)}")
    console.print("problems: none" if not problems else "problems:")
    for f in problems:
        console.print("  " + one_line(f), markup=False)
    if pending:
        console.print("waiting for a decision:")
    for p in pending:
        console.print(f"  {p['id']}: {p['action']} ({p['reason']}), asked {_age(p['time'], now)}\n"
                      f"    approve: {p['approve']}\n    deny:    {p['deny']}", markup=False)
