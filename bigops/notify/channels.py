"""Delivery channels. Each ``send`` raises on failure; the notifier retries and records the outcome."""

from __future__ import annotations

import json
import smtplib
import urllib.request
from email.message import EmailMessage

from trainer.config import AlertsConfig


def _post_json(url: str, payload, timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL from the operator
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")


class SlackWebhook:
    """Slack-compatible incoming webhook (also Mattermost, Rocket.Chat, Teams' Slack mode)."""

    name = "slack"

    def __init__(self, url: str, timeout: float = AlertsConfig.timeout_s):
        self.url, self.timeout = url, timeout

    def send(self, event: dict, line: str) -> None:
        _post_json(self.url, {"text": line}, self.timeout)


class GenericWebhook:
    """POSTs the whole event (finding, evidence, runbook, what was done) as JSON."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = AlertsConfig.timeout_s):
        self.url, self.timeout = url, timeout

    def send(self, event: dict, line: str) -> None:
        _post_json(self.url, {"text": line, "event": event}, self.timeout)


class Alertmanager:
    """Alertmanager's v2 API: one alert per finding, labelled so it groups by run and dedups by key."""

    name = "alertmanager"

    def __init__(self, base_url: str, run: str, timeout: float = AlertsConfig.timeout_s):
        self.url = base_url.rstrip("/") + "/api/v2/alerts"
        self.run, self.timeout = run, timeout

    def send(self, event: dict, line: str) -> None:
        # One alert per incident (a problem that comes back is a new alert); a resolve notice ends it.
        alert = {
            "labels": {"alertname": event["kind"], "severity": event["severity"], "run": self.run,
                       "key": event.get("incident") or event["key"], "source": "bigops-watchdog"},
            "annotations": {"summary": event["summary"], "description": line, "runbook_url": event["runbook"]},
        }
        if event.get("notice") == "resolve":
            import datetime
            alert["endsAt"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        _post_json(self.url, [alert], self.timeout)


class Email:
    name = "email"

    def __init__(self, host: str, port: int, sender: str, recipients: list[str], user: str | None = None,
                 password: str | None = None, starttls: bool = AlertsConfig.smtp_starttls,
                 timeout: float = AlertsConfig.timeout_s):
        self.host, self.port, self.sender, self.recipients = host, port, sender, recipients
        self.user, self.password, self.starttls, self.timeout = user, password, starttls, timeout

    def send(self, event: dict, line: str) -> None:
        message = EmailMessage()
        message["Subject"] = f"[bigops {event['severity']}] {event['kind']}: {event['summary']}"[:200]
        message["From"], message["To"] = self.sender, ", ".join(self.recipients)
        message.set_content(f"{line}\n\nEvidence:\n{json.dumps(event.get('evidence', {}), indent=2, default=str)}\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)
