"""End to end on real components: a tiny training run (4 gloo ranks, `bigops launch`), watched by a real
`bigops watch --metrics-port` exporter, scraped by a real Prometheus (1 s intervals) that evaluates the
generated rules and sends to a real Alertmanager, which delivers to a local webhook receiver.

Every dashboard query and every alert expression must parse; panel queries must return series, and every
metric an alert reads must exist. An XID 79 injected into the GPU samples must page through Alertmanager
(the pager route) and through the watchdog's own webhook; both latencies are printed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bigops.dashboards import alerts, grafana, yamlout
from bigops.dashboards.generate import FAST, alertmanager_config, prometheus_config
from bigops.gpu.fake import FakeGpuBackend
from bigops.gpu.monitor import sample_once
from launcher.local import free_port
from tests import procguard
from tests.integration.services import WebhookReceiver, query, start_alertmanager, start_prometheus
from trainer.rundir import read_jsonl

pytestmark = pytest.mark.distributed

TINY = ["--set", "data.source=synthetic", "--set", "model.vocab_size=512", "--set", "train.seq_length=32",
        "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=2", "--set", "train.eval_interval=5",
        "--set", "train.ln_desync_interval=5", "--steps", "100000", "--save-interval", "20"]

# Metrics no healthy local run can have, each with why.
EXPECTED_EMPTY = {
    "bigops_chain_queued_jobs": "only runs launched with --slurm have a chain",
    "bigops_checkpoint_interval_optimal_steps": "only after a failure: before it there is no failure rate",
}
NEEDS_RUN_DIR: set[str] = set()  # every run-directory metric is served by `bigops watch` now


def bigops(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigops.cli.main", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_launch(run, proc: subprocess.Popen) -> None:
    """A proper stop of the training run: the kill switch (every rank saves and exits, torchrun and the
    launcher after them), then wait until no process of the run is left. SIGTERM to the launcher's group
    would not reach torchrun and the ranks (their own sessions)."""
    control = run / "control"
    control.mkdir(parents=True, exist_ok=True)
    (control / "kill-switch").write_text("end of test\n")
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        stop(proc)  # the ranks' lifeline then stops them (trainer.lifeline)
    left = procguard.wait_gone(run, timeout=180)
    assert not left, f"the launch left {left}"


def wait_for(condition, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: a process exited {p.returncode}: {p.stderr.read().decode()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def series(result: dict) -> list:
    return result.get("data", {}).get("result", []) if result.get("status") == "success" else []


def test_dashboards_and_alerts_on_a_real_run(tmp_path):
    run, receiver = tmp_path / "run", WebhookReceiver()
    env = {**os.environ, "E2E_HOOK": receiver.url + "/watchdog"}
    port = free_port()
    procs, services = [], []
    try:
        procs.append(bigops("launch", "--run-dir", run, *TINY, "--set", "alerts.webhook_env=E2E_HOOK",
                            "--set", "alerts.min_severity=critical", env=env))
        wait_for(lambda: (run / "run.toml").exists(), 60, "run.toml", procs)
        procs.append(bigops("gpu-monitor", run, "--fake", "8:3=hot", "--interval", "1"))
        procs.append(bigops("watch", run, "--interval", "1", "--metrics-port", port, env=env))
        services.append(start_alertmanager(tmp_path / "am", alertmanager_config(
            receiver.url + "/pager", receiver.url + "/chat", FAST)))
        (tmp_path / "prom").mkdir()
        (tmp_path / "prom" / "rules.yml").write_text(yamlout.dump(alerts.rule_groups()))
        prometheus = start_prometheus(tmp_path / "prom", prometheus_config(
            [f"127.0.0.1:{port}"], [str(tmp_path / "prom" / "rules.yml")], [services[0].url.removeprefix("http://")],
            FAST))
        services.append(prometheus)
        wait_for(lambda: series(query(prometheus, f'up{{job="{alerts.JOB}"}} == 1')), 60, "the scrape", procs)
        # A checkpoint, a validation loss and a desync measurement exist, and the run still trains.
        wait_for(lambda: [r for r in read_jsonl(run / "telemetry" / "metrics.jsonl") if r["step"] >= 22], 150,
                 "step 22", procs)
        wait_for(lambda: series(query(prometheus, "bigops_checkpoint_last_step")), 30, "a checkpoint", procs)

        fake = FakeGpuBackend(8, host="fake-node")
        fake.inject(3, temperature_c=95.0, throttle_reasons=["hw_thermal_slowdown"])
        fake.inject(5, xid_errors=[79])
        injected = time.time()
        sample_once(fake, run)
        paged = wait_for(lambda: receiver.first(lambda path, body: path == "/pager" and any(
            a["labels"].get("alertname") == "GpuXid" for a in body.get("alerts", []))), 60, "the GpuXid page")
        direct = wait_for(lambda: receiver.first(lambda path, body: path == "/watchdog" and
                                                 body["event"]["kind"] == "GpuXid"), 30, "the watchdog's page")
        print(f"\nGpuXid fault -> webhook: Prometheus + Alertmanager {paged - injected:.2f} s "
              f"(scrape {FAST.scrape}, eval {FAST.evaluation}, group_wait {FAST.group_wait}); "
              f"watchdog direct {direct - injected:.2f} s (bigops watch --interval 1)")
        assert paged - injected < 15 and direct - injected < 10

        failures = []
        for board in grafana.DASHBOARDS.values():
            for title, expr in grafana.queries(board()):
                result = query(prometheus, grafana.substitute(expr))
                used = alerts.metrics_used(expr)
                if result.get("status") != "success":
                    failures.append(f"panel {title!r}: {result.get('error')}")
                elif not series(result) and not used & (set(EXPECTED_EMPTY) | NEEDS_RUN_DIR):
                    failures.append(f"panel {title!r}: no series for {expr}")
        annotation = query(prometheus, grafana.substitute(grafana.ACTION_ANNOTATION_EXPR))
        if annotation.get("status") != "success":
            failures.append(f"annotation: {annotation.get('error')}")
        for a in alerts.ALERTS + alerts.RECORDS:
            result = query(prometheus, a.expr)
            if result.get("status") != "success":
                failures.append(f"rule {a.name}: {result.get('error')}")
            for metric in alerts.metrics_used(a.expr) - set(EXPECTED_EMPTY) - NEEDS_RUN_DIR:
                if not series(query(prometheus, metric)):
                    failures.append(f"rule {a.name}: no series for {metric}")
        assert not failures, "\n".join(failures)
    finally:
        for proc in procs[1:]:  # the watcher and the GPU sampler name the run too: first
            stop(proc)
        if procs:
            stop_launch(run, procs[0])
        for service in services:
            service.stop()
        receiver.close()
