"""Run the SLURM commands of a chain on a login node over SSH (paramiko), with the local runner's interface.

- Key authentication only; the host key must already be in ``known_hosts`` (``RejectPolicy``: an unknown or
  changed key is refused, never added).
- Every argument is quoted with :func:`shlex.quote` before it reaches the remote shell: job names, paths and
  accounts are data, never code.
- Connect, command and SFTP timeouts; a dropped connection is reopened once before a command runs (a command
  already sent is not re-sent: sbatch twice would submit twice).

    runner = SSHRunner.from_spec("alice@login.cluster:22", key_file="~/.ssh/id_ed25519")
    runner.run(["squeue", "--name=bigops-a"])
"""

from __future__ import annotations

import collections
import os
import posixpath
import shlex
import socket

import paramiko

from launcher.slurm.runner import CommandError, Result


class HostKeyError(CommandError):
    """The server's host key is unknown or differs from ``known_hosts``."""


def parse_host(spec: str) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` -> (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    host, sep, port = rest.partition(":")
    if not host:
        raise ValueError(f"--host {spec!r}: expected [user@]host[:port]")
    try:
        number = int(port) if sep else 22
    except ValueError:
        raise ValueError(f"--host {spec!r}: the port must be a number") from None
    return (user or None), host, number


def remote_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The one string a remote shell receives: every word quoted."""
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    return shlex.join([*prefix, *argv])


class SSHRunner:
    def __init__(self, host: str, *, user: str | None = None, port: int = 22, key_file: str | None = None,
                 known_hosts: str | None = None, timeout: float = 10.0):
        self.host, self.user, self.port, self.timeout = host, user, port, timeout
        self.key_file = os.path.expanduser(key_file) if key_file else None
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self.calls: collections.Counter[str] = collections.Counter()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "SSHRunner":
        user, host, port = parse_host(spec)
        return cls(host, user=user, port=port, **kwargs)

    @property
    def spec(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    # ------------------------------------------------------------------------------------------ connection

    def connect(self) -> paramiko.SSHClient:
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            self.close()  # dropped: reconnect
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(self.known_hosts)
        except FileNotFoundError:
            raise HostKeyError(f"{self.known_hosts} does not exist: add {self.host}'s host key to it "
                               f"(ssh-keyscan, checked by hand) before connecting") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=self.key_file,
                           timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                           allow_agent=self.key_file is None, look_for_keys=self.key_file is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(f"{self.spec}: host key mismatch ({exc.key.get_name()} "
                               f"{exc.key.get_base64()[:16]}... not the one in {self.known_hosts}): refused") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(f"{self.spec}: host key not in {self.known_hosts}: refused") from None
            raise CommandError(f"ssh {self.spec}: {exc}") from None
        except (OSError, socket.timeout) as exc:
            client.close()
            raise CommandError(f"ssh {self.spec}: {exc}") from None
        self._client = client
        return client

    def close(self) -> None:
        for handle in (self._sftp, self._client):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass
        self._sftp = self._client = None

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self.connect()
        if self._sftp is None or self._sftp.get_channel().closed:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(self.timeout)
        return self._sftp

    # ------------------------------------------------------------------------------------------- commands

    def run(self, argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None) -> Result:
        self.calls[posixpath.basename(argv[0])] += 1
        client = self.connect()
        command = remote_command(list(argv), env)
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            code = stdout.channel.recv_exit_status()
        except (paramiko.SSHException, OSError, socket.timeout, EOFError) as exc:
            self.close()
            raise CommandError(f"ssh {self.spec}: {argv[0]}: {exc or type(exc).__name__}") from None
        return Result(code, out, err)

    # ------------------------------------------------------------------------------------------------ files

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write via a temp name, then rename: the remote reader sees the old file or the new one."""
        sftp = self._sftp_client()
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with sftp.open(tmp, "w") as handle:
                handle.write(text.encode())
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)
        except (OSError, paramiko.SSHException) as exc:
            raise CommandError(f"ssh {self.spec}: write {path}: {exc}") from None

    def read_text(self, path: str) -> str | None:
        try:
            with self._sftp_client().open(path, "r") as handle:
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException) as exc:
            raise CommandError(f"ssh {self.spec}: read {path}: {exc}") from None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(self._sftp_client().listdir(path))
        except FileNotFoundError:
            return []
        except (OSError, paramiko.SSHException) as exc:
            raise CommandError(f"ssh {self.spec}: list {path}: {exc}") from None

    def mkdir(self, path: str) -> None:
        result = self.run(["mkdir", "-p", "--", path])
        if not result.ok:
            raise CommandError(f"ssh {self.spec}: mkdir {path}: {result.stderr.strip()}")


def runner_for(host: str | None, key_file: str | None = None, known_hosts: str | None = None):
    """The SSH runner for ``host``, or the local one when there is none (the same code path after that)."""
    if not host:
        from launcher.slurm.runner import LocalRunner
        return LocalRunner()
    return SSHRunner.from_spec(host, key_file=key_file, known_hosts=known_hosts)


__all__ = ["SSHRunner", "HostKeyError", "CommandError", "parse_host", "remote_command", "runner_for"]
