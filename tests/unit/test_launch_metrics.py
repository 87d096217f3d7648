"""`bigops launch --watch --metrics-port`: the supervisor serves the exporter itself (no `bigops watch` beside it)."""

import socket
import subprocess
import sys

from bigops.cli.launch import opened_findings
from bigops.watchdog.findings import Finding


def launch(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(tmp_path / "run"),
                           *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch("--watch", "--metrics-port", port, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: --metrics-port {port}: cannot listen on 127.0.0.1 (Address already in use)"
    assert not (tmp_path / "run" / "run.toml").exists()  # refused before anything was written or started


def test_metrics_port_needs_watch(tmp_path):
    proc = launch("--metrics-port", 9999, tmp_path=tmp_path)
    assert proc.returncode == 2 and "--metrics-port goes with --watch" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_opened_findings_are_the_ones_that_opened_or_escalated_an_incident():
    a = Finding(kind="LossSpike", severity="critical", summary="a", key="LossSpike:0:86")
    b = Finding(kind="ThroughputDrop", severity="warning", summary="b", key="ThroughputDrop")
    c = Finding(kind="GpuHot", severity="warning", summary="c", key="GpuHot:n:3")
    facts = {"findings": [a, b, c], "incident_of": {a.key: "i1", b.key: "i2", c.key: "i3"},
             "notices": [("open", "i1"), ("remind", "i2"), ("escalate", "i3")]}
    assert opened_findings(facts) == [a, c]
    assert opened_findings({}) == []
