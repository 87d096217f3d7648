"""Notifications reach a real local HTTP receiver and a local SMTP server (aiosmtpd); a dead receiver is
retried, recorded, and never blocks detection; secrets never reach events.jsonl."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bigops.cli.main import main
from bigops.notify.secrets import SecretError, load_secrets_file
from launcher.local import free_port
from tests.unit.test_watch import bloom_13b_records, write_run


class Receiver:
    """A local HTTP server that records every POST (path, JSON body)."""

    def __init__(self):
        self.received = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    messages = []

    class Keep(Message):
        def handle_message(self, message):
            messages.append(message)

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, messages
    controller.stop()


def spike_run(tmp_path, alerts: str):
    write_run(tmp_path, bloom_13b_records())
    (tmp_path / "run.toml").write_text(alerts)


def test_every_channel_receives_one_line_per_problem(tmp_path, receiver, smtp_server, monkeypatch, capsys):
    controller, mails = smtp_server
    monkeypatch.setenv("TEST_SLACK_URL", receiver.url + "/slack/T000/SECRET-TOKEN")
    monkeypatch.setenv("TEST_HOOK_URL", receiver.url + "/hook")
    spike_run(tmp_path, f"""[alerts]
slack_webhook_env = "TEST_SLACK_URL"
webhook_env = "TEST_HOOK_URL"
alertmanager_url = "{receiver.url}"
smtp_host = "127.0.0.1"
smtp_port = {controller.port}
email_to = "oncall@example.org"
""")
    assert main(["watch", str(tmp_path), "--once"]) == 0
    by_path = {}
    for path, body in receiver.received:
        by_path.setdefault(path.split("/")[1], []).append(body)
    assert by_path["slack"][0]["text"].startswith("[CRITICAL] LossSpike: loss spike since step 29050")
    assert by_path["hook"][0]["event"]["evidence"]["start_step"] == 29050
    alert = by_path["api"][0][0]
    assert alert["labels"]["alertname"] == "LossSpike" and alert["annotations"]["runbook_url"] == "runbooks/LossSpike.md"
    assert len(mails) == 1 and "LossSpike" in mails[0]["Subject"]
    events = (tmp_path / "events.jsonl").read_text()
    assert events.count('"outcome":"delivered"') == 4
    assert "SECRET-TOKEN" not in events  # the webhook URL is a secret


def test_dead_receiver_is_retried_recorded_and_does_not_block(tmp_path, monkeypatch):
    monkeypatch.setenv("DEAD_HOOK", f"http://127.0.0.1:{free_port()}/token-xyz")
    spike_run(tmp_path, '[alerts]\nwebhook_env = "DEAD_HOOK"\nretries = 2\n')
    from bigops.notify.notifier import from_config
    from bigops.watchdog.daemon import tick
    from bigops.watchdog.state import WatchState
    from trainer import config as config_mod
    from trainer.rundir import RunDir, append_jsonl
    run = RunDir(tmp_path)
    alerts = config_mod.load_toml(run.run_toml, base=config_mod.RunConfig()).alerts
    notifier = from_config(alerts, "r", on_result=lambda r: append_jsonl(run.events, r))
    started = time.perf_counter()
    new, _ = tick(run, WatchState.load(tmp_path / "state.json"), notifier=notifier)
    assert new and time.perf_counter() - started < 1.0  # detection did not wait for delivery
    notifier.drain()
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [r for r in records if r.get("outcome") == "failed"]
    assert failed and failed[0]["attempts"] == 2 and "token-xyz" not in json.dumps(records)


class Sink:
    """A channel that keeps what it was sent."""

    name = "sink"

    def __init__(self):
        self.lines = []

    def send(self, event, line):
        self.lines.append(line)


def test_min_severity_and_rate_limit():
    from bigops.notify.notifier import Notifier

    sink, results = Sink(), []
    n = Notifier([sink], min_severity="warning", rate_limit_per_minute=2, on_result=results.append)
    assert not n.submit({"severity": "info", "key": "i", "kind": "K"}, "i")
    for i in range(4):
        assert n.submit({"severity": "warning", "key": f"w{i}", "kind": "K"}, f"warning {i}")
    n.drain()
    assert sink.lines == ["warning 0", "warning 1"]
    assert [r["outcome"] for r in results].count("rate-limited") == 2


def test_critical_pages_are_never_rate_limited_away():
    """In a storm the limit throttles warnings, never a critical page (it was dropped like any other)."""
    from bigops.notify.notifier import Notifier

    sink, results = Sink(), []
    n = Notifier([sink], rate_limit_per_minute=2, on_result=results.append)
    for i in range(3):
        n.submit({"severity": "warning", "key": f"w{i}", "kind": "K"}, f"warning {i}")
    for i in range(5):
        n.submit({"severity": "critical", "key": f"c{i}", "kind": "K"}, f"critical {i}")
    n.drain()
    assert [line for line in sink.lines if line.startswith("critical")] == [f"critical {i}" for i in range(5)]
    assert "warning 2" not in sink.lines


def test_a_failing_outcome_record_does_not_stop_delivery():
    """A full disk under events.jsonl made the outcome callback raise, which killed the worker thread:
    every later page was lost."""
    from bigops.notify.notifier import Notifier

    def full_disk(result):
        raise OSError(28, "No space left on device")

    sink = Sink()
    n = Notifier([sink], on_result=full_disk)
    for i in range(3):
        n.submit({"severity": "critical", "key": f"c{i}", "kind": "K"}, f"page {i}")
    n.drain()
    assert sink.lines == ["page 0", "page 1", "page 2"] and n.report_errors == 3


def test_secrets_file_must_be_private(tmp_path):
    f = tmp_path / "secrets"
    f.write_text("HOOK=https://example.org/secret\n")
    os.chmod(f, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_secrets_file(f)
    os.chmod(f, 0o600)
    assert load_secrets_file(f) == {"HOOK": "https://example.org/secret"}


def test_secrets_file_must_be_a_regular_file_of_this_user(tmp_path, monkeypatch):
    import os
    real = tmp_path / "real"
    real.write_text("HOOK=https://example.org/secret\n")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(SecretError, match="not a regular file"):
        load_secrets_file(link)
    monkeypatch.setattr(os, "getuid", lambda: 12345)
    with pytest.raises(SecretError, match="belongs to uid"):
        load_secrets_file(real)


def test_pages_queued_when_the_watchdog_dies_are_sent_by_the_next_one(tmp_path):
    """A watchdog SIGKILLed with notifications still queued in memory lost them."""
    import threading
    from bigops.notify.notifier import Notifier
    from bigops.notify.outbox import Outbox

    class Stuck:
        """A receiver that never answers (the process dies before it does)."""
        name = "sink"

        def __init__(self):
            self.release = threading.Event()

        def send(self, event, line):
            self.release.wait()
            raise OSError("gone")

    outbox = Outbox(tmp_path / "outbox")
    stuck = Stuck()
    dying = Notifier([stuck], outbox=outbox, retries=1)
    for i in range(3):
        dying.submit({"severity": "critical", "key": f"c{i}", "kind": "K"}, f"page {i}")
    assert len(outbox.pending()) == 3  # on disk before anything was sent
    # the process "dies" here: its queue is gone; the next writer finds the outbox
    sink, results = Sink(), []
    nxt = Notifier([sink], outbox=Outbox(tmp_path / "outbox"), on_result=results.append)
    assert nxt.resend_pending() == 3
    nxt.drain()
    assert sorted(sink.lines) == ["page 0", "page 1", "page 2"]
    assert Outbox(tmp_path / "outbox").pending() == []
    stuck.release.set()


def test_a_delivered_page_leaves_the_outbox_and_a_full_disk_still_sends(tmp_path, monkeypatch):
    from bigops.notify.notifier import Notifier
    from bigops.notify.outbox import Outbox
    sink = Sink()
    n = Notifier([sink], outbox=Outbox(tmp_path / "outbox"))
    n.submit({"severity": "warning", "key": "w", "kind": "K"}, "kept then removed")
    n.drain()
    assert sink.lines == ["kept then removed"] and Outbox(tmp_path / "outbox").pending() == []

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bigops.notify.outbox.atomic_write_text", full)
    n.submit({"severity": "critical", "key": "c", "kind": "K"}, "sent from memory")
    n.drain()
    assert sink.lines[-1] == "sent from memory"
