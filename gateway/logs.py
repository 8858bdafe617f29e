"""Logging setup: readable lines for people, one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import time

__all__ = ["ACCESS_FIELDS", "JsonFormatter", "setup_logging"]

# Extra fields the access log attaches to its records (and the JSON lines carry as keys).
ACCESS_FIELDS = ("request_id", "remote", "method", "route", "status", "duration_ms",
                 "principal")


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", ...access fields, "exception"}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object for one record."""
        document: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                document[name] = getattr(record, name)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once, for the whole process."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
