"""Real services on 127.0.0.1 for the integration tests: started on free ports with their own config, data
and pid files under a test's folder, stopped by their pid (never by name).

A missing binary fails the test with what to install (``scripts/setup`` does, as root); set
``BIGOPS_ALLOW_MISSING_SERVICES=1`` to skip instead on a machine that cannot have them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bigops.dashboards import yamlout
from launcher.local import free_port

PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager",
            "amtool": "prometheus-alertmanager"}


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    why = (f"{name} not found: install the Debian package {PACKAGES.get(name, name)!r} "
           f"(scripts/setup does it when run as root)")
    if os.environ.get("BIGOPS_ALLOW_MISSING_SERVICES") == "1":
        pytest.skip(why)
    pytest.fail(why + "; or set BIGOPS_ALLOW_MISSING_SERVICES=1 to skip", pytrace=False)


class Service:
    """One daemon: its process, its pid file, its base URL."""

    def __init__(self, name: str, argv: list[str], folder: Path, port: int):
        self.name, self.folder, self.port = name, folder, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(folder / f"{name}.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file = folder / f"{name}.pid"
        self.pid_file.write_text(f"{self.proc.pid}\n")

    def wait_ready(self, path: str = "/-/ready", timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout} s: {self.tail()}")

    def tail(self) -> str:
        try:
            return (self.folder / f"{self.name}.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        pid = int(self.pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        self.pid_file.unlink(missing_ok=True)


def start_prometheus(folder: Path, config: dict) -> Service:
    binary = require_binary("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(yamlout.dump(config))
    port = free_port()
    service = Service("prometheus", [binary, f"--config.file={folder / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                     "--log.level=warn"], folder, port)
    service.wait_ready()
    return service


def start_alertmanager(folder: Path, config: dict) -> Service:
    binary = require_binary("prometheus-alertmanager")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alertmanager.yml").write_text(yamlout.dump(config))
    port = free_port()
    service = Service("alertmanager", [binary, f"--config.file={folder / 'alertmanager.yml'}",
                                       f"--storage.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                       "--cluster.listen-address=", "--log.level=warn"], folder, port)
    service.wait_ready()
    return service


def query(prometheus: Service, expr: str, timeout: float = 10) -> dict:
    """An instant query; returns the API's JSON (``status``, ``data.result``, or ``error``)."""
    data = urllib.parse.urlencode({"query": expr}).encode()
    request = urllib.request.Request(prometheus.url + "/api/v1/query", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400: the expression does not parse
        return json.loads(exc.read())


class WebhookReceiver:
    """A local HTTP server that records every POST as (arrival time, path, JSON body)."""

    def __init__(self):
        self.received: list[tuple[float, str, object]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((time.time(), self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, predicate) -> float | None:
        return next((t for t, path, body in list(self.received) if predicate(path, body)), None)

    def close(self) -> None:
        self.server.shutdown()
