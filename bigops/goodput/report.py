"""A run's goodput as people and scripts read it: the report, its lines, its JSON, its one status line (pure).

The failure rate behind the interval advice counts the relaunches an incident asked for (a crash, a hang, a
rollback: restart and rollback actions naming an incident), not planned ones (a SLURM time-out, a stop); the
save cost is the median save.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from bigops.goodput.account import PARTS, PLANNED, Goodput, Records, account
from bigops.goodput.interval import Advice, advise

SCHEMA_VERSION = 1
LABELS = {"productive": "productive training", "slow": "slow periods", "lost": "work lost (redone)",
          "checkpoint": "checkpoint stalls", "queue": "SLURM queue", "restart": "restart overhead",
          "startup": "first start-up", "stopped": "stopped"}


@dataclass(frozen=True)
class Report:
    root: str
    goodput: Goodput
    advice: Advice


def failures(g: Goodput) -> int:
    """The relaunches an incident caused (each charge with restart time that is not a planned exit)."""
    return sum(1 for c in g.charges if c.cause != PLANNED and c.seconds.get("restart", 0.0) > 0)


def build(root: str, records: Records, save_interval: int | None) -> Report:
    g = account(records)
    saves = [s for _, s in records.saves]
    advice = advise(failures=failures(g), wall_s=g.wall_s, save_s=statistics.median(saves) if saves else None,
                    step_s=g.baseline_step_s, configured_steps=save_interval)
    return Report(root, g, advice)


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole > 0 else "-"


def lines(r: Report) -> list[str]:
    """The screen: the split (largest first), the biggest loss, per cause, the interval advice."""
    g = r.goodput
    wall = g.wall_s
    out = [f"{r.root}  goodput {_pct(g.seconds['productive'], wall)} of {wall:.1f} s wall "
           f"({g.steps_productive} steps kept, {g.steps_lost} lost, {g.relaunches} relaunch(es))"]
    for part in sorted(PARTS, key=lambda p: -g.seconds[p]):
        out.append(f"  {LABELS[part]:<22} {g.seconds[part]:>10.1f} s  {_pct(g.seconds[part], wall):>6}")
    losses = {p: v for p, v in g.seconds.items() if p != "productive" and v > 0}
    if losses:
        worst = max(losses, key=losses.get)
        out.append(f"biggest loss: {LABELS[worst]} ({losses[worst]:.1f} s)")
    if g.charges:
        out.append("per cause:")
    for c in g.charges:
        spent = ", ".join(f"{k} {v:.1f} s" for k, v in c.seconds.items() if v > 0)
        steps = f", {c.steps_lost} steps lost" if c.steps_lost else ""
        out.append(f"  {c.kind} ({c.cause}): {spent}{steps}")
    a = r.advice
    if a.optimal_steps is not None:
        out.append(f"checkpoint interval: {a.optimal_steps} steps is optimal (Daly {a.daly_s:.1f} s, Young "
                   f"{a.young_s:.1f} s; MTBF {a.mtbf_s:.0f} s, save {a.save_s:.2g} s, step {a.step_s:.2g} s): "
                   + ("SUGGESTED: " if a.suggest else "") + a.reason)
    else:
        out.append(f"checkpoint interval: {a.reason}")
    return out


def status_line(r: Report) -> str:
    """One line for ``bigops status``: the productive share and the largest loss."""
    g = r.goodput
    losses = {p: v for p, v in g.seconds.items() if p != "productive" and v > 0}
    worst = max(losses, key=losses.get) if losses else None
    tail = f"; largest loss {LABELS[worst]} {_pct(losses[worst], g.wall_s)}" if worst else ""
    hint = f"; suggest train.save_interval={r.advice.optimal_steps}" if r.advice.suggest else ""
    return f"goodput: {_pct(g.seconds['productive'], g.wall_s)} productive of {g.wall_s:.0f} s{tail}{hint}"


def document(r: Report, timeline: bool = False) -> dict:
    """The JSON document (``schema_version``); ``timeline`` adds every span."""
    g = r.goodput
    doc = {"schema_version": SCHEMA_VERSION, "run": r.root, "start": g.start, "end": g.end, "wall_s": g.wall_s,
           "seconds": dict(g.seconds), "ratio": g.ratio, "steps_productive": g.steps_productive,
           "steps_lost": g.steps_lost, "relaunches": g.relaunches, "baseline_step_s": g.baseline_step_s,
           "charges": [asdict(c) for c in g.charges], "interval": asdict(r.advice)}
    if timeline:
        doc["timeline"] = [asdict(s) for s in g.spans]
    return doc
