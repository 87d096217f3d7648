"""Secrets (webhook URLs, SMTP passwords) come from the environment or a 0600 file, never from run.toml."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretError(ValueError):
    pass


def load_secrets_file(path: str | Path | None) -> dict[str, str]:
    """KEY=VALUE lines; refused unless only its owner can read it (mode 0600 or stricter)."""
    if not path:
        return {}
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SecretError(f"alerts.secrets_file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"alerts.secrets_file {path} is readable by others (mode {stat.S_IMODE(mode):o}): "
                          f"chmod 600 {path}")
    out = {}
    for line in path.read_text().splitlines():
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
