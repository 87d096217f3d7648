"""What ``bigops plot`` draws, as data: curves from a run's records (or a TensorBoard log), markers from its
events, and the figure they make. Pure functions of what was read; matplotlib only in ``bigops.plot.render``.

A run's ``metrics.jsonl`` repeats steps after a rollback (the run went back to a checkpoint and trained the
steps again): the curve is the trajectory that survived (the last record of each step), and the records it
replaced are a faint series of their own, "rolled back", so the spike that caused the rollback stays visible.

Markers come from ``events.jsonl``: an incident where it opened (a ``finding`` event with notice ``open``, at
its step) and every ``rollback`` / ``restart`` / ``kill`` action at the step the run had reached when the
watchdog acted (the last metrics record written before the event's time).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from trainer import tbtags

PANELS = ("loss", "grad_norm", "lr", "tokens_per_second")
"""The figure's panels, top to bottom: each a metrics-record key."""
TITLES = {"loss": "lm loss", "grad_norm": "grad norm", "lr": "learning rate", "tokens_per_second": "tokens/s"}
MARKED_ACTIONS = ("rollback", "restart", "kill")

TB_TAGS = {"loss": tbtags.LOSS, "grad_norm": tbtags.GRAD_NORM, "lr": tbtags.LR,
           "tokens_per_second": tbtags.TOKENS_PER_SECOND}
"""The Megatron-DeepSpeed tag read for each panel from a TensorBoard log (stepped by iteration)."""


@dataclass(frozen=True)
class Series:
    """One line of a panel: ``label``, steps and values of equal length, what it is and whose it is."""

    label: str
    steps: tuple[int, ...]
    values: tuple[float, ...]
    kind: str = "train"
    """``train`` (the surviving trajectory), ``rolled back`` (records a rollback replaced) or ``validation``."""
    source: int = 0
    """0: the run plotted; 1: the compared one (one colour per source)."""

    @property
    def faint(self) -> bool:
        return self.kind == "rolled back"


@dataclass(frozen=True)
class Marker:
    """A vertical line across every panel: an incident opened, or a watchdog action, at ``step``."""

    step: int
    kind: str
    """``incident`` or the action (``rollback``, ``restart``, ``kill``)."""
    label: str


@dataclass(frozen=True)
class Curves:
    """One source (a run or a TensorBoard log): its series per panel (absent panel: no data) and markers."""

    label: str
    panels: dict[str, list[Series]] = field(default_factory=dict)
    markers: list[Marker] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """How many steps the source has (the surviving loss curve's length)."""
        loss = self.panels.get("loss", [])
        return len(loss[0].steps) if loss else 0


@dataclass(frozen=True)
class FigureData:
    """The whole picture: per panel its series (the run's first, then the compared source's), the markers."""

    title: str
    panels: dict[str, list[Series]]
    markers: list[Marker]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _points(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), v) for r in records if (v := _number(r.get(key))) is not None]


def split_rolled_back(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """The surviving trajectory (the last record of each step, in step order) and the records it replaced."""
    last: dict[int, int] = {}
    for i, r in enumerate(records):
        last[int(r["step"])] = i
    kept = sorted(last.values(), key=lambda i: int(records[i]["step"]))
    kept_set = set(kept)
    return [records[i] for i in kept], [r for i, r in enumerate(records) if i not in kept_set]


def step_at(records: list[dict], when: float) -> int | None:
    """The step of the last record written at or before ``when`` (None: before the first record)."""
    step = None
    for r in records:
        t = _number(r.get("time"))
        if t is not None and t <= when:
            step = int(r["step"])
    return step


def markers(records: list[dict], events: list[dict]) -> list[Marker]:
    """Incidents opened and the watchdog's rollbacks, restarts and kills, in the order they happened."""
    out = []
    for e in events:
        if e.get("type") == "finding" and e.get("notice") == "open":
            step = e.get("step") if isinstance(e.get("step"), int) else step_at(records, e.get("time", 0))
            if step is not None:
                out.append(Marker(step, "incident", str(e.get("kind", "incident"))))
        elif e.get("type") == "action" and e.get("action") in MARKED_ACTIONS:
            step = step_at(records, e.get("time", 0))
            if step is None:
                step = e.get("checkpoint_step") if isinstance(e.get("checkpoint_step"), int) else 0
            label = e["action"] + (f" to {e['target']}" if e.get("target") else "")
            out.append(Marker(step, e["action"], label))
    return out


def run_curves(records: list[dict], events: list[dict], label: str) -> Curves:
    """A run's curves from its metrics records (file order) and its events; the validation loss joins the
    loss panel."""
    records = [r for r in records if isinstance(r.get("step"), int)]
    kept, replaced = split_rolled_back(records)
    panels: dict[str, list[Series]] = {}
    for key in PANELS:
        lines = []
        for name, rows, kind in ((label, kept, "train"), (f"{label} (rolled back)", replaced, "rolled back")):
            points = _points(rows, key)
            if points:
                lines.append(Series(name, *map(tuple, zip(*points)), kind=kind))
        if key == "loss" and (val := _points(kept, "val_loss")):
            lines.append(Series(f"{label} validation", *map(tuple, zip(*val)), kind="validation"))
        if lines:
            panels[key] = lines
    return Curves(label, panels, markers(records, events))


def scalar_curves(scalars: dict[str, list[tuple[int, float]]], label: str) -> Curves:
    """Curves from TensorBoard scalars by tag (``(step, value)`` pairs), Megatron-DeepSpeed's names. BLOOM's
    logs have no tokens/s tag: it is derived from ``steps-vs-tokens`` and ``iteration-time`` when both exist."""
    found = dict(scalars)
    if tbtags.TOKENS_PER_SECOND not in found:
        found[tbtags.TOKENS_PER_SECOND] = _derived_rate(found.get(tbtags.STEPS_VS_TOKENS[1], []),
                                                        found.get(tbtags.ITERATION_TIME, []))
    panels = {}
    for key, tag in TB_TAGS.items():
        points = sorted(dict(found.get(tag, [])).items())  # the last value of a step wins, as in a run
        if points:
            panels[key] = [Series(label, *map(tuple, zip(*points)))]
    if val := sorted(dict(found.get(tbtags.VAL_LOSS, [])).items()):
        panels.setdefault("loss", []).append(Series(f"{label} validation", *map(tuple, zip(*val)), kind="validation"))
    return Curves(label, panels)


def _derived_rate(tokens: list[tuple[int, float]], seconds: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Tokens per second from consumed tokens by step and seconds per iteration by step (logged every step or
    every log interval: the tokens since the previous logged step over the steps between, times the time)."""
    by_step, out, prev = dict(seconds), [], None
    for step, total in sorted(dict(tokens).items()):
        if prev is not None and step in by_step and by_step[step] > 0 and step > prev[0]:
            out.append((step, (total - prev[1]) / ((step - prev[0]) * by_step[step])))
        prev = (step, total)
    return out


def figure_data(main: Curves, compare: Curves | None = None) -> FigureData:
    """The figure: every panel either source has, the run's series first, the run's markers."""
    panels = {}
    for key in PANELS:
        theirs = [replace(s, source=1) for s in compare.panels.get(key, [])] if compare is not None else []
        lines = main.panels.get(key, []) + theirs
        if lines:
            panels[key] = lines
    title = main.label + (f" vs {compare.label}" if compare is not None else "")
    return FigureData(title, panels, list(main.markers))
