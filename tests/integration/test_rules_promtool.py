"""The generated rule file passes `promtool check rules`, and every alert's unit test (fires on its fault,
silent on a healthy series) passes `promtool test rules`; the example configs pass their own checkers."""

import subprocess

from bigops.dashboards import alerts, yamlout
from bigops.dashboards.generate import files
from tests.integration.services import require_binary


def run(*argv, cwd):
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_promtool_checks_and_unit_tests_every_alert(tmp_path):
    promtool = require_binary("promtool")
    (tmp_path / "rules.yml").write_text(yamlout.dump(alerts.rule_groups()))
    (tmp_path / "rules.test.yml").write_text(yamlout.dump(alerts.rule_tests("rules.yml")))
    out = run(promtool, "check", "rules", "rules.yml", cwd=tmp_path)
    assert f"{len(alerts.ALERTS) + len(alerts.RECORDS)} rules found" in out
    assert "SUCCESS" in run(promtool, "test", "rules", "rules.test.yml", cwd=tmp_path)
    tested = {t["alert_rule_test"][0]["alertname"] for t in alerts.rule_tests()["tests"]}
    assert tested == set(alerts.ALERT_NAMES)


def test_promtool_fails_a_wrong_expectation(tmp_path):
    promtool = require_binary("promtool")
    (tmp_path / "rules.yml").write_text(yamlout.dump(alerts.rule_groups()))
    tests = alerts.rule_tests("rules.yml")
    tests["tests"] = [t for t in tests["tests"] if t["alert_rule_test"][0]["exp_alerts"]][:1]
    tests["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []  # claims silence where the alert fires
    (tmp_path / "bad.test.yml").write_text(yamlout.dump(tests))
    proc = subprocess.run([promtool, "test", "rules", "bad.test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_committed_example_configs_pass_their_checkers(tmp_path):
    promtool, amtool = require_binary("promtool"), require_binary("amtool")
    for rel, content in files().items():
        if rel.startswith("dashboards/prometheus/") or rel.startswith("dashboards/alertmanager/"):
            (tmp_path / rel.rsplit("/", 1)[1]).write_text(content)
    run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    run(promtool, "test", "rules", "rules.test.yml", cwd=tmp_path)
    run(amtool, "check-config", "alertmanager.yml", cwd=tmp_path)
