"""Send findings to every configured channel without ever blocking detection.

``submit`` only enqueues. A worker thread delivers, retrying with exponential back-off, rate-limited per
channel, and reports each outcome through a callback (the daemon writes it to events.jsonl). Messages and
errors pass through ``redact`` so that a webhook URL or password never reaches a log.

Critical pages are never rate-limited away (they count against the limit, so a storm of them throttles
the warnings behind them instead), and a failing outcome callback (a full disk under events.jsonl) never
stops the worker: the page matters more than its record.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Callable

from bigops.notify import channels as ch
from bigops.notify.secrets import load_secrets_file, redact, resolve
from trainer.config import AlertsConfig

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


class Notifier:
    def __init__(self, channels: list, min_severity: str = AlertsConfig.min_severity,
                 rate_limit_per_minute: int = AlertsConfig.rate_limit_per_minute,
                 retries: int = AlertsConfig.retries, backoff_s: float = 0.5,
                 on_result: Callable[[dict], None] | None = None, secret_values: list[str] = (), outbox=None):
        self.channels, self.min_severity = channels, min_severity
        self.outbox = outbox
        """A :class:`bigops.notify.outbox.Outbox`: pages kept on disk until delivered (None: memory only)."""
        self.rate_limit, self.retries, self.backoff_s = rate_limit_per_minute, retries, backoff_s
        self.on_result = on_result or (lambda result: None)
        self.secret_values = [s for s in secret_values if s]
        self.sent: dict[str, deque] = {c.name: deque() for c in channels}
        self.report_errors = 0
        """Outcomes that could not be recorded (the callback raised)."""
        self.queue: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._run, name="bigops-notifier", daemon=True)
        self.worker.start()

    def wanted(self, severity: str) -> bool:
        return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[self.min_severity]

    def submit(self, event: dict, line: str) -> bool:
        """Enqueue for every channel (never blocks); False when below ``min_severity``."""
        if not self.channels or not self.wanted(event["severity"]):
            return False
        page_id = self.outbox.put(event, line, [c.name for c in self.channels]) if self.outbox else None
        for channel in self.channels:
            self.queue.put((channel, event, line, page_id))
        return True

    def resend_pending(self) -> int:
        """Queue the pages an earlier process kept in the outbox and did not deliver (call it once, as the
        run's writer); returns how many."""
        if self.outbox is None:
            return 0
        by_name = {c.name: c for c in self.channels}
        count = 0
        for page_id, event, line, names in self.outbox.pending():
            for name in names:
                if name in by_name:
                    self.queue.put((by_name[name], {**event, "resent": True}, line, page_id))
                else:
                    self.outbox.done(page_id, name)  # a channel no longer configured
            count += 1
        return count

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything queued was delivered or given up (tests, shutdown)."""
        deadline = time.time() + timeout
        while self.queue.unfinished_tasks and time.time() < deadline:
            time.sleep(0.02)

    def _allowed(self, name: str, now: float, severity: str = "warning") -> bool:
        sent = self.sent[name]
        while sent and now - sent[0] > 60:
            sent.popleft()
        if len(sent) >= self.rate_limit and severity != "critical":
            return False
        sent.append(now)
        return True

    def _report(self, result: dict) -> None:
        try:
            self.on_result(result)
        except Exception:  # noqa: BLE001 - e.g. ENOSPC under events.jsonl: keep delivering
            self.report_errors += 1

    def _run(self) -> None:
        while True:
            channel, event, line, page_id = self.queue.get()
            try:
                self._deliver(channel, event, line)
            finally:
                if self.outbox is not None:
                    self.outbox.done(page_id, channel.name)
                self.queue.task_done()

    def _deliver(self, channel, event: dict, line: str) -> None:
        result = {"type": "notification", "channel": channel.name, "key": event["key"], "kind": event["kind"],
                  "severity": event["severity"], "time": time.time()}
        for name in ("incident", "notice"):
            if name in event:
                result[name] = event[name]
        if not self._allowed(channel.name, time.time(), event.get("severity", "warning")):
            self._report({**result, "outcome": "rate-limited"})
            return
        error = None
        for attempt in range(1, max(1, self.retries) + 1):  # at least one try, whatever the config
            try:
                channel.send(event, line)
                self._report({**result, "outcome": "delivered", "attempts": attempt})
                return
            except Exception as exc:  # noqa: BLE001 - any delivery failure is retried, then recorded
                error = redact(f"{type(exc).__name__}: {exc}", self.secret_values)
                if attempt < max(1, self.retries):
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
        self._report({**result, "outcome": "failed", "attempts": max(1, self.retries), "error": error})


def from_config(alerts, run_name: str, on_result=None, outbox=None) -> Notifier:
    """Build the channels of ``[alerts]`` (trainer.config.AlertsConfig), resolving secrets."""
    secrets = load_secrets_file(alerts.secrets_file)
    channels, secret_values = [], []
    slack = resolve(alerts.slack_webhook_env, secrets)
    if slack:
        channels.append(ch.SlackWebhook(slack, alerts.timeout_s))
        secret_values.append(slack)
    hook = resolve(alerts.webhook_env, secrets)
    if hook:
        channels.append(ch.GenericWebhook(hook, alerts.timeout_s))
        secret_values.append(hook)
    if alerts.alertmanager_url:
        channels.append(ch.Alertmanager(alerts.alertmanager_url, run_name, alerts.timeout_s))
    if alerts.smtp_host and alerts.email_to:
        password = resolve(alerts.smtp_password_env, secrets)
        secret_values.append(password or "")
        channels.append(ch.Email(alerts.smtp_host, alerts.smtp_port, alerts.email_from,
                                 [a.strip() for a in alerts.email_to.split(",") if a.strip()], alerts.smtp_user,
                                 password, alerts.smtp_starttls, alerts.timeout_s))
    return Notifier(channels, alerts.min_severity, alerts.rate_limit_per_minute, alerts.retries,
                    on_result=on_result, secret_values=secret_values, outbox=outbox)


def for_run(run, alerts) -> Notifier:
    """The notifier of a run's writer (``bigops watch``, ``bigops launch --watch``): the channels of its
    ``[alerts]`` (``alerts``: run.toml's ``AlertsConfig``), each delivery's result appended to the run's
    events.jsonl, and the run's outbox (``watchdog/outbox/``: pages kept until delivered; the writer calls
    ``resend_pending`` once). A secret that cannot be used is a SecretError (exit code 2)."""
    from bigops.notify.outbox import Outbox
    from trainer.rundir import append_event

    return from_config(alerts, run.root.resolve().name, on_result=lambda result: append_event(run, result),
                       outbox=Outbox(run.outbox))
