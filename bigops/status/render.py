"""A :class:`~bigops.status.summary.Status` as the one screen people read, and as the JSON scripts read.

The screen, top to bottom: the state line, the problems (most severe first, each with its age, what the
watchdog did and its runbook), what waits for a decision, then progress (step, rate, ETA), the loss trend,
the checkpoint, the ranks (counted; only the odd ones named, at most ``MAX_NAMED_RANKS``), the GPUs (one
line), what is no longer current, and where the TensorBoard logs are. With 384 ranks it stays a screen.

Below the checkpoint: the goodput line (``bigops goodput`` tells the rest) and the last launch's start-up budget.

The JSON holds the same facts under ``schema_version`` (``SCHEMA_VERSION``: bumped when a field changes
meaning or goes away; new fields may come without a bump), plus ``last_record`` and ``problems`` as
``bigops status --format json`` always had them.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from bigops.goodput.report import document as goodput_document
from bigops.goodput.report import status_line as goodput_status_line
from bigops.status.summary import MAX_NAMED_RANKS, Problem, Status, duration
from trainer.startup import describe as describe_startup

SCHEMA_VERSION = 1


def ago(then: float | None, now: float) -> str:
    return "-" if then is None else f"{duration(now - then)} ago"


def lines(s: Status) -> list[str]:
    """The screen, as plain lines (no markup: summaries hold brackets and paths)."""
    out = [headline(s)]
    if s.problems:
        out.append(f"problems ({len(s.problems)}):")
        out += ["  " + problem_line(p, s.now) for p in s.problems]
    else:
        out.append("problems: none")
    if s.pending:
        out.append("waiting for a decision:")
    for p in s.pending:
        out += [f"  {p['id']}: {p['action']} ({p['reason']}), asked {ago(p.get('time'), s.now)}",
                f"    approve: {p['approve']}", f"    deny:    {p['deny']}"]
    out.append(progress_line(s))
    if s.loss_trend is not None:
        t = s.loss_trend
        out.append(f"loss trend: {t.spark}  {t.low:.3f}..{t.high:.3f} over steps {t.first_step}-{t.last_step}")
    out.append(checkpoint_line(s))
    if s.goodput is not None:
        out.append(goodput_status_line(s.goodput))
    if s.startup is not None:
        out.append(f"start-up of the last launch: {describe_startup(s.startup)}")
    if s.spares is not None and isinstance(s.spares.get("wanted"), int) and s.spares["wanted"] > 0:
        out.append(f"warm spares for a restart: {s.spares.get('warm', 0)}/{s.spares['wanted']} ready")
    out += rank_lines(s)
    if s.gpus:
        visible = sum(g["visible"] for g in s.gpus.values())
        temps = [g["max_temperature_c"] for g in s.gpus.values() if g["max_temperature_c"] is not None]
        oldest = min(g["time"] for g in s.gpus.values())
        out.append(f"gpus: {visible} on {len(s.gpus)} host(s), max {max(temps):.0f} C, oldest sample "
                   f"{ago(oldest, s.now)}" if temps else f"gpus: {visible} on {len(s.gpus)} host(s)")
    if s.stale:
        out.append(f"not current ({len(s.stale)}):")
        out += [f"  {p.kind} ({p.severity}): {p.summary} — {p.stale}" for p in s.stale]
    out.append(f"tensorboard: tensorboard --logdir {s.tensorboard}" if s.tensorboard else "tensorboard: no logs yet")
    return out


def headline(s: Status) -> str:
    state = s.state.name.upper()
    since = f" ({ago(s.state.since, s.now)})" if s.state.since is not None else ""
    detail = f": {s.state.detail}" if s.state.detail else ""
    return f"{s.root}  {state}{since}{detail}"


def problem_line(p: Problem, now: float) -> str:
    age = f", open {duration(now - p.opened)}" if p.opened is not None else ""
    done = f"; done: {'; '.join(p.done[-3:])}" if p.done else ""
    return f"[{p.severity.upper()}] {p.kind}{age}: {p.summary}{done} ({p.see})"


def progress_line(s: Status) -> str:
    g = s.progress
    if g.step is None:
        return f"step -/{g.target if g.target is not None else '-'}: no step recorded yet"
    parts = [f"step {g.step}/{g.target if g.target is not None else '-'}"]
    if g.target:
        parts[0] += f" ({100.0 * g.step / g.target:.1f}%)"
    if g.steps_per_second:
        parts.append(f"{g.steps_per_second:.3g} steps/s")
    if g.eta_s is not None:
        parts.append(f"ETA {duration(g.eta_s)}")
    if g.loss is not None:
        parts.append(f"loss {g.loss:.4f}" if math.isfinite(g.loss) else f"loss {g.loss}")
    if g.val_loss is not None:
        parts.append(f"val {g.val_loss:.4f}")
    if g.tokens_per_second:
        parts.append(f"{g.tokens_per_second:,.0f} tok/s")
    parts.append(f"last step {ago(g.last_step_time, s.now)}")
    return "  ".join(parts)


def checkpoint_line(s: Status) -> str:
    c = s.checkpoint
    newest = c.newest_complete
    if newest is None:
        text = "checkpoint: none complete"
    else:
        text = f"checkpoint: {newest['tag']} (step {newest['step']}, {ago(newest.get('created'), s.now)}), " \
               f"newest complete of {c.count}"
        trusted = c.newest_verified
        if trusted and trusted["tag"] == newest["tag"]:
            text += ", verified"
        elif trusted:
            text += f"; newest verified: {trusted['tag']}"
    if c.latest and (newest is None or c.latest != newest["tag"]):
        text += f"; latest names {c.latest}"
    if c.problem:
        text += " — UNTRUSTED latest (see problems)"
    if c.partial:
        text += f"; being written or crashed: {', '.join(c.partial)}"
    return text


def rank_lines(s: Status) -> list[str]:
    r = s.ranks
    if not r.total and not r.odd:
        return ["ranks: no heartbeat"]
    phases = ", ".join(f"{n} {phase}" for phase, n in sorted(r.phases.items(), key=lambda kv: (-kv[1], kv[0])))
    of = f" of {r.expected}" if r.expected and r.expected != r.total else ""
    head = f"ranks: {r.total}{of}, {r.healthy} healthy ({phases})" if s.state.name in ("running", "hung") \
        else f"ranks: {r.total}{of}, not running ({phases})"
    out = [head]
    for o in r.odd[:MAX_NAMED_RANKS]:
        out.append(f"  rank {o.rank}" + (f" on {o.host}" if o.host else "") + f": {o.why}")
    if len(r.odd) > MAX_NAMED_RANKS:
        out.append(f"  ... and {len(r.odd) - MAX_NAMED_RANKS} more odd ranks (--format json lists them)")
    return out


def finite(value):
    """``value`` with every NaN/Inf float replaced by None (strict JSON: ``jq`` refuses ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def document(s: Status) -> dict:
    """The JSON document: the same facts, typed, with ``schema_version`` (NaN/Inf as null)."""
    return finite(_document(s))


def _document(s: Status) -> dict:
    problem = lambda p: {**asdict(p), "age_s": s.now - p.opened if p.opened else None}  # noqa: E731
    return {
        "schema_version": SCHEMA_VERSION, "run": s.root, "now": s.now,
        "state": asdict(s.state),
        "progress": asdict(s.progress),
        "problems": [problem(p) for p in s.problems],
        "not_current": [problem(p) for p in s.stale],
        "pending_approvals": list(s.pending),
        "checkpoint": asdict(s.checkpoint),
        "ranks": {**asdict(s.ranks), "odd": [asdict(o) for o in s.ranks.odd]},
        "loss_trend": asdict(s.loss_trend) if s.loss_trend else None,
        "gpus": s.gpus,
        "tensorboard": s.tensorboard,
        "last_record": s.last_record,
        "startup": s.startup,
        "spares": s.spares,
        "goodput": goodput_document(s.goodput) if s.goodput is not None else None,
    }
