"""The two Grafana dashboards, built as plain dicts in Grafana's dashboard JSON model (schema version
``SCHEMA_VERSION``, Grafana 10.4 / 11.x; imports into Grafana 10+).

- **run overview**: progress, loss and its trend, grad norm, LR, throughput, tokens vs target and ETA,
  checkpoints, the watchdog's findings and actions (restarts and rollbacks also as annotations), TP desync
  and the SLURM chain.
- **cluster health**: per node and GPU temperature, power, utilization, memory, ECC, XIDs, throttling,
  GPUs gone, sampler freshness; heartbeat age per rank and the slowest ranks.

Every query is PromQL over ``bigops.metrics.names`` (and the recording rules of ``bigops.dashboards.alerts``).
"""

from __future__ import annotations

from bigops.dashboards.alerts import CHECKPOINT_MAX_AGE_S, GPU_HOT_CRITICAL_C, GPU_HOT_WARNING_C, NO_PROGRESS_S
from bigops.metrics import names as m
from trainer.rundir import RELATIVE

SCHEMA_VERSION = 39
GRAFANA_VERSION = "11.0.0"
"""The grafana-foundation-sdk release the checker parses with (pyproject's test extra pins it)."""
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
R = 'run=~"$run"'
RN = 'run=~"$run",host=~"$node"'


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend or "__auto", "range": not instant}
    if instant:
        t["instant"] = True
    return t


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new rows."""

    def __init__(self):
        self.panels: list[dict] = []
        self.x = self.y = self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = self.row_h = 0


def _thresholds(*steps: tuple[float | None, str]) -> dict:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short", **defaults) -> dict:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {"type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0,
                                                                   "spanNulls": False}, **defaults},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, description: str, expr: str, unit: str = "short", thresholds: dict | None = None,
         legend: str = "{{run}}") -> dict:
    return {"type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": [target(expr, legend, instant=True)],
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": thresholds or _thresholds((None, "green"))},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "justifyMode": "auto", "textMode": "auto",
                        "orientation": "auto"}}


def bargauge(title: str, description: str, expr: str, legend: str, unit: str = "s") -> dict:
    return {"type": "bargauge", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": [target(expr, legend, instant=True)],
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": _thresholds((None, "green"))}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}}


def variables(with_node: bool) -> dict:
    out = [
        {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"type": "query", "name": "run", "label": "Run", "datasource": DATASOURCE,
         "query": {"query": f"label_values({m.UP.name}, run)", "refId": "run"},
         "definition": f"label_values({m.UP.name}, run)", "refresh": 2, "includeAll": True, "multi": True,
         "current": {}, "hide": 0, "sort": 1, "regex": "", "options": []},
    ]
    if with_node:
        query = f"label_values({m.GPU_SAMPLE.name}{{{R}}}, host)"
        out.append({"type": "query", "name": "node", "label": "Node", "datasource": DATASOURCE,
                    "query": {"query": query, "refId": "node"}, "definition": query, "refresh": 2,
                    "includeAll": True, "multi": True, "current": {}, "hide": 0, "sort": 1, "regex": "",
                    "options": []})
    return {"list": out}


ACTION_ANNOTATION_EXPR = (f'sum by (run, action) (increase({m.ACTIONS.name}{{{R},action=~"restart|rollback|kill|'
                          f'give-up"}}[2m])) > 0')


def annotations() -> dict:
    return {"list": [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {"datasource": DATASOURCE, "enable": True, "hide": False, "iconColor": "orange",
         "name": "Restarts and rollbacks", "expr": ACTION_ANNOTATION_EXPR, "step": "60s",
         "titleFormat": "{{action}}", "textFormat": "watchdog {{action}} on run {{run}}", "useValueForTime": False},
    ]}


def dashboard(uid: str, title: str, description: str, panels: list[dict], with_node: bool) -> dict:
    return {"uid": uid, "title": title, "description": description, "tags": ["bigops"], "timezone": "browser",
            "editable": True, "graphTooltip": 1, "time": {"from": "now-6h", "to": "now"},
            "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m"]}, "fiscalYearStartMonth": 0,
            "liveNow": False, "refresh": "30s", "schemaVersion": SCHEMA_VERSION, "version": 1, "weekStart": "",
            "panels": panels, "templating": variables(with_node), "annotations": annotations(),
            "links": [{"title": "Runbooks", "type": "link", "url": "runbooks/", "icon": "doc", "tooltip":
                       "One page per alert: meaning, impact, diagnosis, mitigation", "targetBlank": True,
                       "asDropdown": False, "includeVars": False, "keepTime": False, "tags": []}]}


def run_overview() -> dict:
    """One training run's dashboard: a row of progress, one of training curves, one of the watchdog."""
    g = Layout()
    _progress_row(g)
    _training_row(g)
    _watchdog_row(g)
    _goodput_row(g)
    return dashboard("bigops-run-overview", "bigops: run overview", "One training run: progress, loss, "
                     "throughput, checkpoints and what the watchdog saw and did.", g.panels, with_node=False)


def _progress_row(g: Layout) -> None:
    """Where the run is: step, target, ETA, the last progress and checkpoint, tokens and samples consumed."""
    g.row("Progress")
    g.add(stat("Step", "Last optimizer step recorded by the trainer.", f"max by (run) ({m.STEP.name}{{{R}}})"), 4, 4)
    g.add(stat("Done", "Step over the target step (train.train_steps).",
               f"max by (run) ({m.STEP.name}{{{R}}}) / max by (run) ({m.TARGET_STEP.name}{{{R}}})", "percentunit"),
          4, 4)
    g.add(stat("ETA", "Steps left over the step rate of the last 10 minutes (recording rule).",
               f"max by (run) (bigops:run_eta_seconds{{{R}}})", "s"), 4, 4)
    g.add(stat("Last progress", "Seconds since the last recorded step (NoProgress pages above "
               f"{NO_PROGRESS_S} s).", f"time() - max by (run) ({m.PROGRESS.name}{{{R}}})", "s",
               _thresholds((None, "green"), (300, "orange"), (NO_PROGRESS_S, "red"))), 4, 4)
    g.add(stat("Checkpoint step", "Step of the newest complete checkpoint (checkpoints/latest).",
               f"max by (run) ({m.CKPT_STEP.name}{{{R}}})"), 4, 4)
    g.add(stat("Checkpoint age", f"CheckpointTooOld warns above {CHECKPOINT_MAX_AGE_S} s while training.",
               f"time() - max by (run) ({m.CKPT_TIME.name}{{{R}}})", "s",
               _thresholds((None, "green"), (CHECKPOINT_MAX_AGE_S / 2, "orange"), (CHECKPOINT_MAX_AGE_S, "red"))), 4, 4)
    g.add(timeseries("Tokens consumed vs target", "Samples x sequence length, and the run's total.", [
        target(f"max by (run) ({m.CONSUMED_TOKENS.name}{{{R}}})", "{{run}} consumed"),
        target(f"max by (run) ({m.TARGET_TOKENS.name}{{{R}}})", "{{run}} target")], "short"), 8, 8)
    g.add(timeseries("Samples consumed", "The data position (what a rollback or --set-consumed-samples moves).", [
        target(f"max by (run) ({m.CONSUMED.name}{{{R}}})", "{{run}}")], "short"), 8, 8)
    g.add(timeseries("Step rate", "Optimizer steps per second over 10 minutes (recording rule).", [
        target(f"bigops:run_steps_per_second:deriv10m{{{R}}}", "{{run}}")], "short"), 8, 8)


def _training_row(g: Layout) -> None:
    """How it trains: loss, gradient norm, LR, throughput, layer-norm desync and skipped steps."""
    g.row("Training")
    g.add(timeseries("Loss", "Training loss per step, its 15-minute mean (the trend), and the validation loss.", [
        target(f"{m.LOSS.name}{{{R}}}", "{{run}} loss"),
        target(f"avg_over_time({m.LOSS.name}{{{R}}}[15m])", "{{run}} 15m mean"),
        target(f"{m.VAL_LOSS.name}{{{R}}}", "{{run}} validation")]), 12, 8)
    g.add(timeseries("Gradient norm", "Global gradient norm of the last step.", [
        target(f"{m.GRAD_NORM.name}{{{R}}}", "{{run}}")]), 12, 8)
    g.add(timeseries("Learning rate", "Learning rate of the last step.", [
        target(f"{m.LR.name}{{{R}}}", "{{run}}")], "sci"), 8, 8)
    g.add(timeseries("Tokens per second", "Training throughput (all ranks).", [
        target(f"{m.TOKENS.name}{{{R}}}", "{{run}}")], "short"), 8, 8)
    g.add(timeseries("TFLOP/s per GPU", "Model FLOPs per second per GPU.", [
        target(f"{m.TFLOPS.name}{{{R}}}", "{{run}}")], "short"), 8, 8)
    g.add(timeseries("Layer-norm desync", "Max |difference| of TP-duplicated parameters across TP ranks "
                     "(TPDesync above watchdog.desync_threshold).", [target(f"{m.DESYNC.name}{{{R}}}", "{{run}}")],
                     "sci"), 12, 8)
    g.add(timeseries("Skipped steps", "1 while the optimizer skips steps (NaN/Inf gradients).", [
        target(f"{m.SKIPPED.name}{{{R}}}", "{{run}}")]), 12, 8)


def _watchdog_row(g: Layout) -> None:
    """What the watchdog sees and does: its health, approvals, the chain's depth, disk, problems, actions."""
    g.row("Watchdog")
    g.add(stat("Watchdog up", "1 while the watchdog runs and reads the run directory.",
               f"min by (run) ({m.UP.name}{{{R}}})", thresholds=_thresholds((None, "red"), (1, "green"))), 4, 4)
    g.add(stat("Watchdog tick age", "Seconds since the watchdog last scanned the run.",
               f"time() - max by (run) ({m.WATCHDOG_TICK.name}{{{R}}})", "s",
               _thresholds((None, "green"), (60, "orange"), (300, "red"))), 4, 4)
    g.add(stat("Pending approvals", "Actions waiting for `bigops approve` / `bigops deny`.",
               f"max by (run) ({m.PENDING.name}{{{R}}})", thresholds=_thresholds((None, "green"), (1, "red"))), 4, 4)
    g.add(stat("Queued chain jobs", "Jobs of the run's SLURM chain pending or running (the chain's depth).",
               f"max by (run) ({m.CHAIN_QUEUED.name}{{{R}}})",
               thresholds=_thresholds((None, "red"), (1, "green"))), 4, 4)
    g.add(stat("Disk free", "Free space on the run directory's filesystem.",
               f"min by (run) ({m.DISK_FREE.name}{{{R}}} / {m.DISK_SIZE.name}{{{R}}})", "percentunit",
               _thresholds((None, "red"), (0.05, "orange"), (0.15, "green"))), 4, 4)
    g.add(stat("Actions in 24 h", "Restarts, rollbacks, kills and syncs by the watchdog in the last day.",
               f"sum by (run) (increase({m.ACTIONS.name}{{{R}}}[24h]))"), 4, 4)
    g.add(timeseries("Open problems", "Each problem kind the watchdog saw in its last scan (1 while it lasts).", [
        target(f"max by (run, kind, severity) ({m.OPEN.name}{{{R}}})", "{{run}} {{kind}} ({{severity}})")]), 12, 8)
    g.add(timeseries("Findings per hour", "Problems reported (new episodes), by kind.", [
        target(f"sum by (run, kind) (increase({m.FINDINGS.name}{{{R}}}[1h]))", "{{run}} {{kind}}")]), 12, 8)
    g.add(timeseries("Watchdog actions per hour", "Restarts, rollbacks, kills, give-ups and layer-norm syncs.", [
        target(f"sum by (run, action) (increase({m.ACTIONS.name}{{{R}}}[1h]))", "{{run}} {{action}}")]), 24, 8)


def _goodput_row(g: Layout) -> None:
    """Where the wall time went (``bigops goodput``), and the last launch's start-up budget."""
    g.row("Goodput")
    g.add(stat("Goodput", "Productive training over the run's wall time (restarts, redone steps, saves, slow "
               "periods and the SLURM queue are the rest).", f"min by (run) ({m.GOODPUT_RATIO.name}{{{R}}})",
               "percentunit", _thresholds((None, "red"), (0.5, "orange"), (0.8, "green"))), 4, 8)
    g.add(stat("Optimal save interval", "Daly's optimum train.save_interval (steps) for the measured failure rate "
               "and save cost; bigops goodput suggests it when the configured one is more than 2x off.",
               f"max by (run) ({m.CKPT_INTERVAL_OPTIMAL.name}{{{R}}})"), 4, 8)
    g.add(bargauge("Wall time by part", "Every second of the run in exactly one part: productive, slow, lost "
                   "(redone), checkpoint, queue, restart, startup, stopped.",
                   f"max by (run, part) ({m.GOODPUT_SECONDS.name}{{{R}}})", "{{part}}"), 8, 8)
    g.add(bargauge("Start-up of the last launch", f"Seconds per start-up phase, max over ranks "
                   f"({RELATIVE.startup_log}).", f"max by (run, phase) ({m.STARTUP_SECONDS.name}{{{R}}})",
                   "{{phase}}"), 8, 8)


def cluster_health() -> dict:
    g = Layout()
    g.row("GPUs")
    g.add(timeseries("GPU temperature", f"GpuHot warns at {GPU_HOT_WARNING_C} C, pages at {GPU_HOT_CRITICAL_C} C.", [
        target(f"{m.GPU_TEMP.name}{{{RN}}}", "{{host}} GPU {{gpu}}")], "celsius",
        thresholds=_thresholds((None, "green"), (GPU_HOT_WARNING_C, "orange"), (GPU_HOT_CRITICAL_C, "red"))), 12, 8)
    g.add(timeseries("GPU power", "Power draw per GPU.", [
        target(f"{m.GPU_POWER.name}{{{RN}}}", "{{host}} GPU {{gpu}}")], "watt"), 12, 8)
    g.add(timeseries("GPU utilization", "Fraction of time a kernel ran.", [
        target(f"{m.GPU_UTIL.name}{{{RN}}}", "{{host}} GPU {{gpu}}")], "percentunit"), 12, 8)
    g.add(timeseries("GPU memory used", "Device memory in use.", [
        target(f"{m.GPU_MEM.name}{{{RN}}}", "{{host}} GPU {{gpu}}")], "bytes"), 12, 8)
    g.add(timeseries("ECC double-bit errors", "Uncorrected ECC errors since driver load (GpuEccDoubleBit).", [
        target(f"{m.GPU_DBE.name}{{{RN}}}", "{{host}} GPU {{gpu}}")]), 8, 8)
    g.add(timeseries("XID events", "XID events per code in the recent samples (GpuXid).", [
        target(f"sum by (host, gpu, xid) ({m.GPU_XID.name}{{{RN}}})", "{{host}} GPU {{gpu}} XID {{xid}}")]), 8, 8)
    g.add(timeseries("Throttling", "Active throttle reasons (GpuThrottled pages on hardware ones).", [
        target(f"max by (host, gpu, reason) ({m.GPU_THROTTLED.name}{{{RN}}})", "{{host}} GPU {{gpu}} {{reason}}")]),
          8, 8)
    g.add(stat("GPUs visible", "GPUs in each node's last sample (a drop: GpuMissing).",
               f"sum by (host) ({m.GPU_VISIBLE.name}{{{RN}}})", legend="{{host}}"), 12, 4)
    g.add(stat("GPU sample age", "Seconds since each node's last GPU sample (GpuSamplerSilent).",
               f"time() - max by (host) ({m.GPU_SAMPLE.name}{{{RN}}})", "s",
               _thresholds((None, "green"), (60, "orange"), (300, "red")), legend="{{host}}"), 12, 4)
    g.row("Ranks")
    g.add(timeseries("Heartbeat age per rank", "Seconds since each rank's last heartbeat (TrainingHang).", [
        target(f"time() - {m.HEARTBEAT.name}{{{R}}}", "{{run}} rank {{rank}}")], "s"), 12, 8)
    g.add(bargauge("Slowest ranks", "The five ranks with the longest forward pass in their last step "
                   "(a straggler's stands out).", f"topk(5, {m.FORWARD.name}{{{R}}})", "{{run}} rank {{rank}}"), 12, 8)
    return dashboard("bigops-cluster-health", "bigops: cluster health", "Nodes, GPUs and ranks of the runs.",
                     g.panels, with_node=True)


DASHBOARDS = {"run-overview.json": run_overview, "cluster-health.json": cluster_health}


def queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    """A panel query as Grafana sends it with every variable on All."""
    return expr.replace('=~"$run"', '=~".*"').replace('=~"$node"', '=~".*"')
