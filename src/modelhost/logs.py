"""One log format for every modelhost process, with each line about a model version tagged.

A model server holds many versions and writes one log; the lines about one version (its
loading, its environment, its tracebacks) carry `[version N]`, so the serving API can show one
version's log as the managed services do.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar

# The version the code running now works for; set where a version's work starts.
VERSION: ContextVar[str | None] = ContextVar("modelhost_version", default=None)

FORMAT = "%(asctime)s %(levelname)s %(name)s%(version_tag)s: %(message)s"
# A record's first line: what FORMAT writes, and uvicorn's `INFO:     ...`.
_RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |[A-Z]+: )")


class _VersionTag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        version = getattr(record, "version", None) or VERSION.get()
        record.version_tag = f" [version {version}]" if version else ""
        return True


def configure_logging() -> None:
    """Written for the person on call: time, level, where, which version, what happened."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_VersionTag())
    # httpx logs every request at INFO; the controller polls its model servers every second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic names each of its plugins at every start; modelhost says what it migrated.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def tag(version: str) -> str:
    """What a line written straight to a model server's log carries for `version`."""
    return f"[version {version}]"


def of_version(text: str, version: str) -> str:
    """The records of a model server's log that are about `version`, tracebacks included."""
    marker = f" {tag(version)}"
    kept: list[str] = []
    keeping = False
    for line in text.splitlines(keepends=True):
        if _RECORD_START.match(line):
            keeping = marker in line.split(": ", 1)[0]
        if keeping:
            kept.append(line)
    return "".join(kept)
