"""Logging for `wgcast run`: plain text for a terminal, no own timestamp under journald
(it stamps every line itself), or one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

FORMATS = ("text", "json")

_TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"
#: Under journald: the journal keeps the time and the unit; `<N>` gives each line its
#: priority (SyslogLevelPrefix=yes is systemd's default for services).
_JOURNAL = "<%(priority)d>%(name)s %(levelname)s %(message)s"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def under_journald(stream: IO[str], env: Mapping[str, str] | None = None) -> bool:
    """Is `stream` the journal? $JOURNAL_STREAM is "dev:inode" of the stream systemd
    connected (checked against the fd, so a redirected stderr is not mistaken for it)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _PriorityFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.priority = _PRIORITY.get(record.levelno, 6)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (RFC 3339, UTC), level, logger, msg (+ exc)."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        if self.timestamps:
            t = time.gmtime(record.created)
            out["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", t) + \
                f".{int(record.msecs):03d}Z"
        out.update(level=record.levelname, logger=record.name, msg=record.getMessage())
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: int, fmt: str = "text", stream: IO[str] | None = None,
              env: Mapping[str, str] | None = None) -> logging.Handler:
    """Set up the root logger for the daemon; returns the handler installed."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    stream = sys.stderr if stream is None else stream
    journal = under_journald(stream, env)
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(timestamps=not journal)
    elif journal:
        formatter = logging.Formatter(_JOURNAL)
        handler.addFilter(_PriorityFilter())
    else:
        formatter = logging.Formatter(_TEXT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    return handler
