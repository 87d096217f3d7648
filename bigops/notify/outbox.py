"""Pages not yet delivered, kept on disk until every channel has had its answer.

The notifier delivers from memory, off the detection path; a watchdog killed (SIGKILL, OOM, node loss)
with pages still queued used to lose them. Each submitted page is first written here
(``watchdog/outbox/<id>.json``, atomically: the event, its line and the channels still to serve), crossed off
channel by channel as each final outcome (delivered, failed after its retries, rate-limited) is recorded,
and removed when none is left. The run's next writer sends what it finds (``resent: true``): a page may
arrive twice after a crash at the wrong instant, never not at all. When the disk refuses the write (it
is full), the page goes out from memory anyway.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from trainer.rundir import atomic_write_text

MAX_PAGES = 1000
"""Oldest pages beyond this are dropped from the outbox on resend (a receiver down for days)."""


class Outbox:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def put(self, event: dict, line: str, channels: list[str]) -> str | None:
        """Keep a page; its id, or None when it cannot be written (it is still sent from memory)."""
        page_id = uuid.uuid4().hex[:16]
        try:
            self._write(page_id, {"event": event, "line": line, "channels": channels})
        except (OSError, TypeError, ValueError):
            return None
        return page_id

    def done(self, page_id: str | None, channel: str) -> None:
        """``channel`` has had its final outcome for the page."""
        if page_id is None:
            return
        page = self._read(self.folder / f"{page_id}.json")
        if page is None:
            return
        left = [c for c in page["channels"] if c != channel]
        try:
            if left:
                self._write(page_id, {**page, "channels": left})
            else:
                (self.folder / f"{page_id}.json").unlink(missing_ok=True)
        except OSError:
            pass

    def pending(self) -> list[tuple[str, dict, str, list[str]]]:
        """(id, event, line, channels left) of every page kept, oldest first."""
        try:
            paths = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        out = []
        for path in paths[-MAX_PAGES:]:
            page = self._read(path)
            if page is not None:
                out.append((path.stem, page["event"], page["line"], page["channels"]))
        return out

    def _write(self, page_id: str, page: dict) -> None:
        atomic_write_text(self.folder / f"{page_id}.json", json.dumps(page, default=str) + "\n")

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            if path.is_symlink() or path.stat().st_size > 1 << 20:
                return None
            page = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(page, dict) or not isinstance(page.get("event"), dict) or \
                not isinstance(page.get("line"), str) or not isinstance(page.get("channels"), list):
            return None
        return page
