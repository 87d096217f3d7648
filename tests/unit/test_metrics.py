"""The exporter's output parses with prometheus-client's own parser, with the declared names only."""

import time
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bigops.gpu.fake import FakeGpuBackend
from bigops.gpu.monitor import sample_once
from bigops.metrics import names
from bigops.metrics.exporter import RunCollector, serve
from bigops.watchdog.daemon import tick
from bigops.watchdog.state import WatchState
from launcher.local import free_port
from tests.unit.test_watch import bloom_13b_records, write_run
from trainer.rundir import RunDir


def scrape_text(tmp_path) -> str:
    write_run(tmp_path, bloom_13b_records(), [{"rank": 0, "host": "n", "pid": 1, "step": 3, "phase": "step",
                                               "time": time.time()}])
    (tmp_path / "run.toml").write_text("[train]\ntrain_steps = 30000\n")
    sample_once(FakeGpuBackend(2, host="node-a"), tmp_path)
    run = RunDir(tmp_path)
    collector = RunCollector("myrun")
    now = time.time()
    new, facts = tick(run, WatchState.load(tmp_path / "watchdog" / "state.json"), now=now)
    collector.update(facts, facts["findings"], new, now)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_exposition_parses_and_uses_declared_names(tmp_path):
    families = {f.name: f for f in text_string_to_metric_families(scrape_text(tmp_path))}
    declared = {n.name.removesuffix("_total") for n in names.ALL}
    assert set(families) <= declared
    value = lambda name, **labels: next(s.value for s in families[name].samples  # noqa: E731
                                        if all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("bigops_up", run="myrun") == 1
    assert value("bigops_run_step") == 29110 and value("bigops_run_target_step") == 30000
    assert value("bigops_gpu_temperature_celsius", host="node-a", gpu="1") == 55.0
    assert value("bigops_gpu_utilization_ratio", host="node-a", gpu="0") == 0.97
    assert value("bigops_findings", kind="LossSpike", severity="critical") == 1
    assert families["bigops_findings"].type == "counter"


def test_all_names_follow_conventions():
    for metric in names.ALL:
        assert metric.name.startswith("bigops_") and metric.name == metric.name.lower()
        assert (metric.kind == "counter") == metric.name.endswith("_total")
        assert "age" not in metric.name  # timestamps, not ages


def test_served_on_localhost(tmp_path):
    collector = RunCollector("r")
    port = free_port()
    serve(collector, port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "bigops_up" in body
