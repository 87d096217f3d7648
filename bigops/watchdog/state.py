"""What the watchdog remembers across its own restarts: incidents, the detectors' streaming state, the
restart ledger, what was acted on and what waits for a person. Only the writer of a run (the holder of
``bigops.watchdog.lock``) saves it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trainer.rundir import atomic_write_text

FORMAT = 2


@dataclass
class WatchState:
    path: Path
    incidents: dict[str, dict] = field(default_factory=dict)
    """Incident table by id (``bigops.watchdog.incidents``): open ones and the newest resolved ones."""
    stream: dict = field(default_factory=dict)
    """The detectors' streaming state (read offsets, episodes), so a restarted daemon resumes it."""
    restarts: list[dict] = field(default_factory=list)
    """Automatic restarts so far: {"time", "from_step", "reason"} (the budget and progress guards)."""
    handled: dict[str, dict] = field(default_factory=dict)
    """Incident ids an action was already taken for (never act twice, even after our own restart)."""
    pending: dict[str, dict] = field(default_factory=dict)
    """Actions asked for (``watchdog.on_* = "ask"``), by id: pending -> approved/denied -> done
    (see ``bigops.watchdog.approvals``)."""
    extra: dict = field(default_factory=dict)
    """Sections this version does not know (written by a newer one): kept as they are."""

    KNOWN = ("incidents", "stream", "restarts", "handled", "pending")

    @classmethod
    def load(cls, path: Path) -> "WatchState":
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError):
            # A damaged state file must not stop the watchdog: start afresh, keep the bad file aside.
            try:
                path.replace(path.with_suffix(".damaged"))
            except OSError:
                pass
            data = {}

        def typed(key, kind):
            value = data.get(key)
            return value if isinstance(value, kind) else kind()
        incidents = {k: v for k, v in typed("incidents", dict).items()
                     if isinstance(v, dict) and isinstance(v.get("key"), str) and v.get("id") == k}
        extra = {k: v for k, v in data.items() if k not in cls.KNOWN and k not in ("format", "reported")}
        return cls(path=path, incidents=incidents, stream=typed("stream", dict), restarts=typed("restarts", list),
                   handled=typed("handled", dict), pending=typed("pending", dict), extra=extra)

    def save(self) -> None:
        """Atomic (temp + fsync + rename); raises OSError (e.g. a full disk) for the caller to report."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.extra, "format": FORMAT, "incidents": self.incidents, "stream": self.stream,
                "restarts": self.restarts, "handled": self.handled, "pending": self.pending}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def read_section(path: Path, name: str) -> dict | None:
    """One section of ``watchdog/state.json``, read only, for the commands beside the writer (None: a
    missing or damaged file, or no such section: ``WatchState.load`` would set a damaged file aside)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else None


def open_spike_steps(path: Path) -> dict[int, str]:
    """{first step of an open loss spike / non-finite incident: its id} from ``watchdog/state.json``, read
    only (a missing or damaged file: none). Whoever removes checkpoints keeps the newest one before each:
    a spike watched for ``watchdog.spike_patience`` steps may still be rolled back to it."""
    incidents = read_section(path, "incidents")
    out: dict[int, str] = {}
    for iid, inc in (incidents or {}).items():
        if not isinstance(inc, dict) or inc.get("status") != "open" or \
                inc.get("kind") not in ("LossSpike", "NonFiniteLoss", "NonFiniteLimit"):
            continue
        evidence = inc.get("evidence") if isinstance(inc.get("evidence"), dict) else {}
        step = next((v for v in (evidence.get("start_step"), evidence.get("streak_start"), inc.get("step"))
                     if isinstance(v, int) and not isinstance(v, bool)), None)
        if step is not None:
            out[step] = str(iid)
    return out

