"""``bigops alerts``: render the Prometheus alert rules; send a test notification through every channel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bigops.cli.options import ForceOpt, RunDirArg, Severity, existing_run, make_app

app = make_app("Alerts: render the Prometheus rules, test the run's notification channels.")


@app.command("render")
def render(
    out_file: Annotated[Path, typer.Argument(help="Rule file to write (YAML), e.g. rules.yml.", show_default=False)],
    runbook_base: Annotated[str, typer.Option("--runbook-base", help="Where the runbooks are served: each alert's "
                                              "runbook_url is BASE/<Alert>.md.")] = "runbooks",
    tests: Annotated[Optional[Path], typer.Option("--tests", help="Also write the promtool unit tests here "
                                                  "(`promtool test rules FILE`).")] = None,
    force: ForceOpt = False,
) -> None:
    """Write the alert and recording rules for Prometheus' rule_files."""
    from bigops.dashboards import alerts, yamlout
    from bigops.dashboards.generate import HEADER, write_generated

    contents = {out_file: HEADER + yamlout.dump(alerts.rule_groups(runbook_base))}
    if tests is not None:
        contents[tests] = HEADER + yamlout.dump(alerts.rule_tests(str(out_file.resolve()), runbook_base))
    write_generated(contents, force)
    typer.echo(f"wrote {out_file} ({len(alerts.ALERTS)} alerts, {len(alerts.RECORDS)} recording rules)")
    if tests is not None:
        typer.echo(f"wrote {tests}")


@app.command("test")
def test(
    run_dir: RunDirArg,
    severity: Annotated[Severity, typer.Option("--severity", case_sensitive=False, help="Severity of the test "
                        "notification (routes it: critical goes to the pager in the example Alertmanager config).")]
    = Severity.warning,
) -> None:
    """Send one test notification through every channel of run.toml's alerts section, now, and say what each did
    (exit 1 if any failed)."""
    import time
    import uuid

    from bigops.errors import BigopsError, ConfigError
    from bigops.notify.notifier import from_config
    from bigops.notify.secrets import redact
    from trainer.rundir import load_run_config

    severity = severity.value
    run = existing_run(run_dir)
    name = run.root.resolve().name
    notifier = from_config(load_run_config(run, missing_ok=True).alerts, name)  # a SecretError is one line, exit code 2
    if not notifier.channels:
        raise ConfigError(f"{run.run_toml}: no channel in [alerts] (slack_webhook_env, webhook_env, "
                          "alertmanager_url or smtp_host + email_to)")
    event = {"kind": "BigopsTestNotification", "severity": severity, "key": f"test-{uuid.uuid4().hex[:8]}",
             "summary": f"test notification for run {name}: this channel works", "step": None,
             "time": time.time(), "evidence": {}, "runbook": "runbooks/README.md"}
    line = f"[{severity.upper()}] BigopsTestNotification: {event['summary']}"
    failed = 0
    for channel in notifier.channels:
        started = time.time()
        try:
            channel.send(event, line)
            typer.echo(f"{channel.name}: delivered in {time.time() - started:.2f} s")
        except Exception as exc:  # noqa: BLE001 - report every channel's failure, go on with the next
            failed += 1
            typer.echo(f"{channel.name}: FAILED: {redact(f'{type(exc).__name__}: {exc}', notifier.secret_values)}")
    if failed:
        raise BigopsError(f"{failed} of {len(notifier.channels)} channel(s) failed")
