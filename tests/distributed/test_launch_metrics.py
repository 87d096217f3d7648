"""`bigops launch --watch --metrics-port`: the supervisor serves the run's Prometheus metrics from its own
passes (no `bigops watch` beside it); scraped once while the run trains."""

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from launcher.local import free_port
from tests.distributed.test_training_run import FAST, start, wait_for_step
from tests.procguard import wait_gone

pytestmark = pytest.mark.distributed


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_supervised_launch_serves_its_metrics(tmp_path):
    run, port = tmp_path / "run", free_port()
    proc = start("launch", "--run-dir", run, *FAST, "--steps", 100_000, "--watch", "--set", "watchdog.interval_s=0.5",
                 "--metrics-port", port)
    try:
        wait_for_step(run, 3, proc, timeout=300)
        deadline = time.time() + 60
        while True:  # the first pass that saw a step
            families = scrape(port)
            step = [s for s in families.get("bigops_run_step", []) if s.labels.get("run") == "run"]
            if step and step[0].value >= 1 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert step and step[0].value >= 1, families.get("bigops_run_step")
        assert [s.value for s in families["bigops_up"]] == [1.0]
        assert {s.labels["rank"] for s in families["bigops_rank_heartbeat_timestamp_seconds"]} == {"0", "1", "2", "3"}
        assert abs(families["bigops_watchdog_last_tick_timestamp_seconds"][0].value - time.time()) < 30
        assert {s.labels["action"] for s in families["bigops_watchdog_actions"] if s.name.endswith("_total")} >= \
            {"restart", "rollback"}
    finally:
        (run / "control").mkdir(parents=True, exist_ok=True)
        (run / "control" / "kill-switch").write_text("end of test\n")
        proc.communicate(timeout=180)
        assert not wait_gone(run, timeout=120)
    assert proc.returncode == 10  # STOPPED_ON_REQUEST: the supervisor does not restart a kill switch
