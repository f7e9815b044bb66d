"""Logging of the long-running commands (worker, trainer service, broker): one setup for all.

``log_format = "json"`` writes one JSON object per line, which a container's log collector
reads as fields without parsing free text; ``"text"`` is for a terminal.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, message and, with an
    exception, exc_info (the formatted traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a message argument that JSON cannot hold is already in "message" as text.
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stdout) in ``log_format``, replacing earlier handlers.

    stdout, as faust's worker has always logged: a service's output is its log.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
