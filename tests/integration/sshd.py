"""A real OpenSSH server on 127.0.0.1 (a free port, key-only auth, its own host key), stopped by its PID.

``SetEnv`` gives the sessions ``SLURM_CONF``, as a login node's profile would.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import procguard
from tests.integration.slurm_cluster import free_port, require


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    def __init__(self, root: Path, env: dict[str, str] | None = None):
        # the session's marker reaches what runs over SSH (sshd gives its sessions a clean environment), so
        # that the leak check sees a run a remote command left behind
        self.root, self.env = root, {procguard.MARKER: procguard.session_marker(), **(env or {})}
        self.port = free_port()
        self.pid_file = root / "sshd.pid"

    def start(self) -> "Sshd":
        require(("sshd", "ssh-keygen"), "openssh-server")
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        host_pub = keygen(root / "host_key")
        user_pub = keygen(root / "user_key")
        (root / "authorized_keys").write_text(user_pub + "\n")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub.split()[:2])}\n")
        self.user_key = root / "user_key"
        # one SetEnv line: sshd takes the first SetEnv directive only
        set_env = "SetEnv " + " ".join(f"{k}={v}" for k, v in self.env.items()) + "\n" if self.env else ""
        (root / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {self.pid_file}
AuthorizedKeysFile {root}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
{set_env}""")
        sshd = "/usr/sbin/sshd"
        subprocess.run([sshd, "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")], check=True)
        deadline = time.time() + 10
        while not self.pid_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        try:  # lives across the module's tests: the leak check leaves it (and its connections) to stop()
            procguard.own(int(self.pid_file.read_text().strip()))
        except (OSError, ValueError):
            pass
        return self

    @property
    def host(self) -> str:
        return f"{getpass.getuser()}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def sshd_factory(tmp_path_factory):
    started = []

    def make(env=None) -> Sshd:
        server = Sshd(tmp_path_factory.mktemp("sshd"), env).start()
        started.append(server)
        return server
    yield make
    for server in started:
        server.stop()
