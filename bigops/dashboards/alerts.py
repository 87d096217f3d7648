"""Prometheus alert and recording rules for a bigops run, and a ``promtool test rules`` case for each alert.

Two kinds of alert:

- **raw**: a PromQL condition on the exporter's metrics (the run stopped progressing, a GPU is hot, the
  watchdog itself is down). These page even when the watchdog's detectors are mis-tuned.
- **mirrored**: the watchdog's own finding (``bigops_finding_active{kind=...}``) for the problems whose
  detection needs the daemon's logic (robust loss-spike statistics, TP desync threshold, stragglers);
  severity is the finding's. Alert, runbook and finding share one name.

The exporter's series carry ``run``; Prometheus adds ``job`` and ``instance`` (scrape with
``honor_labels: true`` and job name ``bigops``, see ``dashboards/prometheus/prometheus.yml``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bigops.metrics import names as m
from bigops.watchdog.detectors.gpu import CRITICAL_XIDS, HW_THROTTLE
from trainer.config import WatchdogConfig

JOB = "bigops"
"""The scrape job name the rules expect for the watchdog's exporter."""
NO_PROGRESS_S = 900
"""No new step for this long (and the run is not finished): NoProgress. BLOOM-176B took ~105 s a step."""
CHECKPOINT_MAX_AGE_S = 4 * 3600
"""The newest complete checkpoint is older than this while training progresses: CheckpointTooOld."""
GPU_HOT_WARNING_C = WatchdogConfig.gpu_temperature_warning_c
GPU_HOT_CRITICAL_C = WatchdogConfig.gpu_temperature_critical_c
"""GpuHotWarning / GpuHotCritical: the watchdog's own GpuHot limits (``watchdog.gpu_temperature_*_c``), as
their defaults (the rules are generated once, for every run)."""
GPU_SILENT_S = WatchdogConfig.gpu_sampler_silent_s
"""GpuSamplerSilent: the watchdog's own limit (``watchdog.gpu_sampler_silent_s``), as its default."""


@dataclass(frozen=True)
class Case:
    """A ``promtool test rules`` case: input series (promtool's expanding notation, 1m interval), an
    evaluation time, and the alert's labels when it must fire (None: it must stay silent)."""
    series: dict[str, str]
    at: str = "20m"
    labels: dict[str, str] | None = None
    value: str = ""
    """What ``{{ $value | humanize }}`` (or humanizeDuration) prints, when the description uses it."""


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    summary: str
    description: str
    fires: Case
    silent: Case
    for_: str = "0m"
    severity: str | None = None
    """None: the series' own ``severity`` label (a mirrored finding's)."""
    extra_cases: tuple[Case, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Record:
    name: str
    expr: str


RUN = 'run="r",job="bigops",instance="n:9100"'
GPU = RUN + ',host="node-a",gpu="3"'


def _s(metric: m.Metric, labels: str = RUN) -> str:
    return f"{metric.name}{{{labels}}}"


def _finding(kind: str, severity: str) -> str:
    return f'{m.OPEN.name}{{{RUN},kind="{kind}",severity="{severity}"}}'


def _labels(selector_labels: str) -> dict[str, str]:
    return dict(kv.split("=") for kv in selector_labels.replace('"', "").split(","))


def mirrored(kind: str, severity: str, summary: str, meaning: str) -> Alert:
    """An alert that pages on the watchdog's finding ``kind`` (severity: the finding's)."""
    return Alert(
        kind, f'max by (run, severity) ({m.OPEN.name}{{kind="{kind}"}}) > 0', summary,
        f"{meaning} The watchdog reports {kind} ({{{{ $labels.severity }}}}) on run {{{{ $labels.run }}}}: "
        f"`bigops status` and events.jsonl carry its one-line summary, evidence and what it already did.",
        fires=Case({_finding(kind, severity): "1x20"}, labels={"run": "r", "severity": severity}),
        silent=Case({_finding("LossBlip", "info"): "1x20", _finding(kind, severity): "0x20"}))


CRITICAL_XID_RE = "|".join(str(x) for x in sorted(CRITICAL_XIDS))
HW_THROTTLE_RE = "|".join(HW_THROTTLE)

ALERTS: list[Alert] = [
    Alert("WatchdogDown",
          f'up{{job="{JOB}"}} == 0 or absent(up{{job="{JOB}"}}) or {m.UP.name} == 0 '
          f"or (time() - {m.WATCHDOG_TICK.name} > 300)",
          "The bigops watchdog is down or not scanning",
          "Prometheus cannot scrape the bigops watchdog ({{ $labels.instance }}), or it has not scanned its run "
          "for 5 minutes. Nobody watches the run: no restarts, no rollbacks, no findings.",
          for_="2m", severity="critical",
          fires=Case({f'up{{job="{JOB}",instance="n:9100"}}': "1 1 0x20"},
                     labels={"job": JOB, "instance": "n:9100"}),
          silent=Case({f'up{{job="{JOB}",instance="n:9100"}}': "1x20", _s(m.UP): "1x20",
                       _s(m.WATCHDOG_TICK): "0+60x20"}),
          extra_cases=(Case({_s(m.UP): "1x20", _s(m.WATCHDOG_TICK): "0x20",
                             f'up{{job="{JOB}",instance="n:9100"}}': "1x20"}, labels=_labels(RUN)),
                       Case({"other_metric": "1x20"}, labels={"job": JOB}))),
    Alert("NoProgress",
          f"time() - {m.PROGRESS.name} > {NO_PROGRESS_S} unless on(run) ({m.STEP.name} >= {m.TARGET_STEP.name})",
          "Run {{ $labels.run }} has recorded no training step for 15 minutes",
          "No optimizer step for {{ $value | humanizeDuration }} on run {{ $labels.run }}, and it has not reached "
          "its target step: hung, crashed, or waiting in the queue.",
          for_="5m", severity="critical",
          fires=Case({_s(m.PROGRESS): "0x30", _s(m.STEP): "5x30", _s(m.TARGET_STEP): "100x30"}, at="30m",
                     labels=_labels(RUN), value="30m 0s"),
          silent=Case({_s(m.PROGRESS): "0+60x30", _s(m.STEP): "5+1x30", _s(m.TARGET_STEP): "100x30"}, at="30m"),
          extra_cases=(Case({_s(m.PROGRESS): "0x30", _s(m.STEP): "100x30", _s(m.TARGET_STEP): "100x30"},
                            at="30m"),)),
    Alert("RunDown",
          f'max by (run) ({m.OPEN.name}{{kind="RanksNotRunning"}}) > 0 '
          f"unless on(run) (max by (run) ({m.CHAIN_QUEUED.name}) > 0)",
          "Run {{ $labels.run }} has no live rank and no job queued",
          "The ranks of run {{ $labels.run }} are not running and no job of its SLURM chain is waiting in the "
          "queue: nothing will bring it back by itself.",
          for_="2m", severity="critical",
          fires=Case({_finding("RanksNotRunning", "critical"): "1x20"}, labels={"run": "r"}),
          silent=Case({_finding("RanksNotRunning", "critical"): "1x20", _s(m.CHAIN_QUEUED): "2x20"})),
    Alert("GpuHot",
          f"max by (run, host, gpu) ({m.GPU_TEMP.name}) >= {GPU_HOT_CRITICAL_C}",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} at {{ $value | humanize }} C",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) has been at or above "
          f"{GPU_HOT_CRITICAL_C} C for 2 minutes; it throttles and slows every rank of the run.",
          for_="2m", severity="critical",
          fires=Case({_s(m.GPU_TEMP, GPU): "95x20"}, labels={"run": "r", "host": "node-a", "gpu": "3"},
                     value="95"),
          silent=Case({_s(m.GPU_TEMP, GPU): "70x20"})),
    Alert("GpuHot",
          f"max by (run, host, gpu) ({m.GPU_TEMP.name}) >= {GPU_HOT_WARNING_C} "
          f"< {GPU_HOT_CRITICAL_C}",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} at {{ $value | humanize }} C",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) has been between "
          f"{GPU_HOT_WARNING_C} and {GPU_HOT_CRITICAL_C} C for 10 minutes.",
          for_="10m", severity="warning",
          fires=Case({_s(m.GPU_TEMP, GPU): "87x20"}, labels={"run": "r", "host": "node-a", "gpu": "3"},
                     value="87"),
          silent=Case({_s(m.GPU_TEMP, GPU): "80x20"})),
    Alert("GpuEccDoubleBit",
          f"max by (run, host, gpu) ({m.GPU_DBE.name}) > 0",
          "Uncorrected ECC errors on GPU {{ $labels.gpu }} of {{ $labels.host }}",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) reports {{ $value | humanize }} "
          "double-bit ECC error(s): its results can no longer be trusted.",
          severity="critical",
          fires=Case({_s(m.GPU_DBE, GPU): "0 0 2x20"}, labels={"run": "r", "host": "node-a", "gpu": "3"},
                     value="2"),
          silent=Case({_s(m.GPU_DBE, GPU): "0x20"})),
    Alert("GpuXid",
          f'max by (run, host, gpu, xid) ({m.GPU_XID.name}{{xid=~"{CRITICAL_XID_RE}"}}) > 0',
          "XID {{ $labels.xid }} on GPU {{ $labels.gpu }} of {{ $labels.host }}",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) logged XID {{ $labels.xid }}, "
          "one that means the hardware needs attention.",
          severity="critical",
          fires=Case({_s(m.GPU_XID, GPU + ',xid="79"'): "0 1x20"},
                     labels={"run": "r", "host": "node-a", "gpu": "3", "xid": "79"}),
          silent=Case({_s(m.GPU_XID, GPU + ',xid="79"'): "0x20"})),
    Alert("GpuXid",
          f'max by (run, host, gpu, xid) ({m.GPU_XID.name}{{xid!~"{CRITICAL_XID_RE}"}}) > 0',
          "XID {{ $labels.xid }} on GPU {{ $labels.gpu }} of {{ $labels.host }}",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) logged XID {{ $labels.xid }}, "
          "usually the application's own fault (a crash shows in the ranks' logs).",
          for_="5m", severity="warning",
          fires=Case({_s(m.GPU_XID, GPU + ',xid="13"'): "1x20"},
                     labels={"run": "r", "host": "node-a", "gpu": "3", "xid": "13"}),
          silent=Case({_s(m.GPU_XID, GPU + ',xid="13"'): "0x20"})),
    Alert("GpuMissing",
          f"max by (run, host, gpu) ({m.GPU_VISIBLE.name}) == 0",
          "GPU {{ $labels.gpu }} of {{ $labels.host }} fell off the bus",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) was seen earlier but NVML no "
          "longer lists it: its rank cannot work.",
          for_="1m", severity="critical",
          fires=Case({_s(m.GPU_VISIBLE, GPU): "1 1 0x20"}, labels={"run": "r", "host": "node-a", "gpu": "3"}),
          silent=Case({_s(m.GPU_VISIBLE, GPU): "1x20"})),
    Alert("GpuSamplerSilent",
          f"time() - max by (run, host) ({m.GPU_SAMPLE.name}) > {GPU_SILENT_S}",
          "No GPU sample from {{ $labels.host }} for {{ $value | humanizeDuration }}",
          "`bigops gpu-monitor` on {{ $labels.host }} (run {{ $labels.run }}) stopped writing samples: GPU "
          "faults on that node go unseen.",
          severity="warning",
          fires=Case({_s(m.GPU_SAMPLE, RUN + ',host="node-a"'): "0x20"}, labels={"run": "r", "host": "node-a"},
                     value="20m 0s"),
          silent=Case({_s(m.GPU_SAMPLE, RUN + ',host="node-a"'): "0+60x20"})),
    Alert("GpuThrottled",
          f'max by (run, host, gpu) ({m.GPU_THROTTLED.name}{{reason=~"{HW_THROTTLE_RE}"}}) > 0',
          "GPU {{ $labels.gpu }} of {{ $labels.host }} is hardware-throttled",
          "GPU {{ $labels.gpu }} on {{ $labels.host }} (run {{ $labels.run }}) has been slowed by hardware "
          "(thermal, power brake) for 10 minutes; the whole run goes at its pace.",
          for_="10m", severity="warning",
          fires=Case({_s(m.GPU_THROTTLED, GPU + ',reason="hw_thermal_slowdown"'): "1x20"},
                     labels={"run": "r", "host": "node-a", "gpu": "3"}),
          silent=Case({_s(m.GPU_THROTTLED, GPU + ',reason="sw_power_cap"'): "1x20"})),
    Alert("CheckpointTooOld",
          f"time() - {m.CKPT_TIME.name} > {CHECKPOINT_MAX_AGE_S} "
          f"and on(run) (time() - {m.PROGRESS.name} < {NO_PROGRESS_S})",
          "Run {{ $labels.run }}: the newest checkpoint is {{ $value | humanizeDuration }} old",
          "Run {{ $labels.run }} trains but has not completed a checkpoint for {{ $value | humanizeDuration }}: "
          "a crash now loses all that work.",
          for_="10m", severity="warning",
          fires=Case({_s(m.CKPT_TIME): "0x300", _s(m.PROGRESS): "0+60x300"}, at="5h",
                     labels=_labels(RUN), value="5h 0m 0s"),
          silent=Case({_s(m.CKPT_TIME): "0+60x300", _s(m.PROGRESS): "0+60x300"}, at="5h")),
    Alert("RestartBudgetExhausted",
          f'increase({m.ACTIONS.name}{{action="give-up"}}[1h]) > 0',
          "The watchdog gave up on run {{ $labels.run }}",
          "The supervisor of run {{ $labels.run }} stopped restarting it (restart budget spent, no progress "
          "between restarts, or a failure a restart cannot fix). The run stays down until someone acts.",
          severity="critical",
          fires=Case({_s(m.ACTIONS, RUN + ',action="give-up"'): "0 0 1x20"}, at="10m",
                     labels=_labels(RUN + ',action="give-up"')),
          silent=Case({_s(m.ACTIONS, RUN + ',action="give-up"'): "0x20", _s(m.ACTIONS, RUN + ',action="restart"'):
                       "0 1 2x20"}, at="10m")),
    Alert("WatchdogApprovalNeeded",
          f"max by (run) ({m.PENDING.name}) > 0",
          "Run {{ $labels.run }}: a watchdog action waits for bigops approve",
          "{{ $value | humanize }} action(s) of the watchdog on run {{ $labels.run }} wait for `bigops approve` "
          "or `bigops deny`; the run may be stopped meanwhile.",
          severity="critical",
          fires=Case({_s(m.PENDING): "1x20"}, labels={"run": "r"}, value="1"),
          silent=Case({_s(m.PENDING): "0x20"})),
    mirrored("ChainEmpty", "critical", "Run {{ $labels.run }}: no SLURM job running or queued",
             "The run's SLURM chain has no job left."),
    mirrored("ChainStopped", "critical", "Run {{ $labels.run }}: the SLURM chain is held",
             "A job failed in a way a restart cannot fix and the watchdog held the chain."),
    mirrored("ChainNodesShort", "critical", "Run {{ $labels.run }}: fewer usable SLURM nodes than a job needs",
             "The partition has fewer usable nodes than slurm.nodes and no job runs: the queued jobs would wait "
             "forever."),
    mirrored("LossSpike", "critical", "Loss spike on run {{ $labels.run }}",
             "The training loss jumped far above its recent median and stayed there."),
    mirrored("TrainingHang", "critical", "Run {{ $labels.run }} hangs",
             "Ranks stopped sending heartbeats for far longer than a step takes."),
    mirrored("NonFiniteLoss", "critical", "NaN/Inf loss on run {{ $labels.run }}",
             "The loss is NaN or Inf for several steps in a row."),
    mirrored("NonFiniteGradNorm", "critical", "NaN/Inf gradient norm on run {{ $labels.run }}",
             "The gradient norm is NaN or Inf for several steps in a row."),
    mirrored("SkippedSteps", "warning", "Run {{ $labels.run }} skips optimizer steps",
             "The optimizer skips steps (overflow) several times in a row."),
    mirrored("GradNormSpike", "warning", "Gradient norm explosion on run {{ $labels.run }}",
             "The gradient norm is many times its recent median."),
    mirrored("TPDesync", "warning", "TP-duplicated parameters diverge on run {{ $labels.run }}",
             "Layer norms that must be identical across tensor-parallel ranks differ."),
    mirrored("Straggler", "warning", "A slow rank holds back run {{ $labels.run }}",
             "One rank's forward pass is much slower than its peers'."),
    mirrored("ThroughputDrop", "warning", "Throughput dropped on run {{ $labels.run }}",
             "Tokens per second fell well below the run's recent rate."),
    mirrored("DiskFullSoon", "critical", "The run directory's disk is nearly full ({{ $labels.run }})",
             "The filesystem holding the run has room for few more checkpoints."),
    mirrored("InodesLow", "warning", "The run directory's filesystem runs out of inodes ({{ $labels.run }})",
             "Few inodes are left on the filesystem holding the run."),
    mirrored("GpuRowRemap", "warning", "GPU memory rows pending remap on run {{ $labels.run }}",
             "A GPU has memory rows pending remapping or retirement, or failed to remap them."),
]

RECORDS: list[Record] = [
    Record("bigops:run_steps_per_second:deriv10m", f"deriv({m.STEP.name}[10m])"),
    Record("bigops:run_eta_seconds",
           f"({m.TARGET_STEP.name} - {m.STEP.name}) / (bigops:run_steps_per_second:deriv10m > 0)"),
]

ALERT_NAMES = sorted({a.name for a in ALERTS})


def runbook_url(name: str, base: str) -> str:
    return f"{base.rstrip('/')}/{name}.md"


def rule_groups(runbook_base: str = "runbooks") -> dict:
    """The rule file (``prometheus --config.file`` ``rule_files``) as a dict."""
    alerts = []
    for a in ALERTS:
        rule = {"alert": a.name, "expr": a.expr, "for": a.for_}
        if a.severity:
            rule["labels"] = {"severity": a.severity}
        rule["annotations"] = {"summary": a.summary, "description": a.description,
                               "runbook_url": runbook_url(a.name, runbook_base)}
        alerts.append(rule)
    return {"groups": [
        {"name": "bigops-recording", "rules": [{"record": r.name, "expr": r.expr} for r in RECORDS]},
        {"name": "bigops-alerts", "rules": alerts},
    ]}


_TEMPLATE = re.compile(r"\{\{ \$(labels\.(\w+)|value \| (humanize|humanizeDuration)) \}\}")


def expand(template: str, labels: dict[str, str], value: str) -> str:
    """What Prometheus makes of our annotation templates (only the forms they use)."""
    return _TEMPLATE.sub(lambda mt: labels.get(mt.group(2), "") if mt.group(2) else value, template)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def _alert_test(a: Alert, case: Case, runbook_base: str) -> dict:
    expected = []
    if case.labels is not None:
        labels = dict(case.labels)
        if a.severity:
            labels["severity"] = a.severity
        expected.append({"exp_labels": labels, "exp_annotations": {
            "summary": expand(a.summary, labels, case.value), "description": expand(a.description, labels, case.value),
            "runbook_url": runbook_url(a.name, runbook_base)}})
    return {"interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
            "alert_rule_test": [{"eval_time": case.at, "alertname": a.name, "exp_alerts": expected}]}


def rule_tests(rules_file: str = "rules.yml", runbook_base: str = "runbooks") -> dict:
    """``promtool test rules`` input: each alert fires on its fault and stays silent on a healthy series.

    Alerts that share a name (two severities) are tested one rule at a time: a case of one rule would
    see the other's alerts too, so each case feeds only series that the other rule ignores."""
    tests = []
    for a in ALERTS:
        for case in (a.fires, a.silent, *a.extra_cases):
            if case.labels is not None and _seconds(case.at) < _seconds(a.for_):
                raise ValueError(f"{a.name}: case at {case.at} is before its for: {a.for_}")
            tests.append(_alert_test(a, case, runbook_base))
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}


def metrics_used(expr: str) -> set[str]:
    return set(re.findall(r"\b(bigops_[a-z_]+|bigops:[a-z_:0-9]+)", expr))
