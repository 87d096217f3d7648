"""Secrets (webhook URLs, SMTP passwords) come from the environment or a 0600 file, never from run.toml."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bigops import exitcodes
from bigops.errors import BigopsError


class SecretError(BigopsError, ValueError):
    """A secret that cannot be used safely or at all: a configuration error (exit code 2)."""

    exit_code = exitcodes.USAGE


def load_secrets_file(path: str | Path | None) -> dict[str, str]:
    """KEY=VALUE lines; refused unless it is a regular file (not a link), owned by this user, that only its
    owner can read (mode 0600 or stricter): nobody else can have planted or read it."""
    if not path:
        return {}
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise SecretError(f"alerts.secrets_file {path} does not exist") from None
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        raise SecretError(f"alerts.secrets_file {path} is not a regular file (a link or device is refused)")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SecretError(f"alerts.secrets_file {path} belongs to uid {info.st_uid}, not to you ({os.getuid()})")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"alerts.secrets_file {path} is readable by others (mode {stat.S_IMODE(mode):o}): "
                          f"chmod 600 {path}")
    out = {}
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd) as handle:
        text = handle.read(1 << 20)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def resolve(name: str | None, secrets: dict[str, str]) -> str | None:
    """The value of variable ``name`` (environment first, then the secrets file)."""
    if not name:
        return None
    return os.environ.get(name) or secrets.get(name)


def redact(text: str, secret_values: list[str]) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "<redacted>")
    return text
