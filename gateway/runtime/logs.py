"""Logging setup: readable lines for people, one JSON object per line for log shippers.

A busy gateway writes an access line per request, so the per-line cost matters (measured in
bench/: about a fifth of a cached request). Lines are written in batches by a thread
(warnings and errors at once, and everything at exit), records skip the caller lookup and
the thread/process fields nothing here prints, and timestamps are formatted once a second.

No credential reaches the log, whichever logger wrote the record (aiohttp's own included):
the handler's RedactingFilter takes Authorization values, Basic/Bearer credentials, URL
passwords and `password=`-like values out of messages, arguments and tracebacks, and turns
aiohttp's record of a request its parser refused (which quotes the raw header line) into
one clean line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import TextIO

from aiohttp.http_exceptions import HttpProcessingError

__all__ = [
    "ACCESS_FIELDS",
    "BatchingStreamHandler",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "redact",
    "setup_logging",
]

FLUSH_INTERVAL = 0.1  # seconds an INFO line may wait before it is written
MAX_BATCH = 512  # lines; a fuller batch is written at once
# Workers share one stderr pipe: a write of at most PIPE_BUF bytes is never interleaved
# with another process's, so no line is torn (Linux: 4096).
ATOMIC_WRITE = 4096

# Extra fields the access log attaches to its records (and the JSON lines carry as keys).
ACCESS_FIELDS = ("request_id", "remote", "method", "route", "status", "duration_ms", "principal")
ACCESS_LOGGER = "gateway.access"
_AIOHTTP_SERVER = "aiohttp.server"  # logs the requests its parser refused, with the bytes

REDACTED = "[redacted]"
# Lower-case words without which no pattern below can match: most records skip the regexes.
_MARKERS = ("auth", "basic", "bearer", "pass", "secret", "token", "://")
_CREDENTIALS = (
    # An Authorization or Proxy-Authorization header in any rendering (raw line, dict or
    # multidict repr, form field): its whole value, to the closing quote or end of line.
    (
        re.compile(
            r"""(?<![\w-])((?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)[^'"\r\n&]+""",
            re.IGNORECASE,
        ),
        rf"\1{REDACTED}",
    ),
    # A Basic or Bearer credential wherever it stands, also after an escaped line break.
    (
        re.compile(r"\b(basic|bearer)((?:\s|\\[rnt]|%20)+)[A-Za-z0-9+/=._~-]+", re.IGNORECASE),
        rf"\1\2{REDACTED}",
    ),
    # The password of a URL's userinfo. The scheme's length is bounded so that a long run
    # of scheme characters without "://" costs linear time, not quadratic.
    (
        re.compile(r"(\b[a-z][a-z0-9+.-]{0,31}://[^/\s:@'\"]*):[^/\s@'\"]+@", re.IGNORECASE),
        rf"\1:{REDACTED}@",
    ),
    # `password=...`, and a quoted value after a password/secret/token-named key.
    (
        re.compile(
            r"""(\b\w*(?:password|passwd|secret|token)['"]?(?:=|\s*[:=]\s*(?=['"])))"""
            r"""(?:'[^']*'|"[^"]*"|[^\s'"&,;)}]+)""",
            re.IGNORECASE,
        ),
        rf"\1{REDACTED}",
    ),
)
# Where the reason of a parser error ends and its quotation of the raw bytes begins.
_QUOTATION = re.compile(r"""[:'"\\\n]""")


class _SecondCache:
    """`strftime` of the current second, computed once per second."""

    def __init__(self, pattern: str, utc: bool = False) -> None:
        self._pattern = pattern
        self._utc = utc
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            moment = time.gmtime(second) if self._utc else time.localtime(second)
            self._text = time.strftime(self._pattern, moment)
            self._second = second
        return self._text


class TextFormatter(logging.Formatter):
    """`2026-11-27 10:00:00,123 INFO name: message`, the timestamp cached per second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._seconds = _SecondCache("%Y-%m-%d %H:%M:%S")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The local time to the millisecond, as logging's default format has it."""
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", ...access fields, "exception"}` per line."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache("%Y-%m-%dT%H:%M:%S", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object for one record."""
        document: dict[str, object] = {
            "ts": f"{self._seconds(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                document[name] = getattr(record, name)
        if record.exc_text:  # the traceback as the redacting filter left it
            document["exception"] = record.exc_text
        elif record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def redact(text: str) -> str:
    """`text` with every credential it shows replaced by "[redacted]"."""
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):
        return text
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Takes credentials out of a record before any formatter sees it (mutates the record)."""

    def __init__(self) -> None:
        super().__init__()
        self._tracebacks = logging.Formatter()  # the rendering every formatter here uses

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub `record` in place; never drops it."""
        if record.name == ACCESS_LOGGER:
            # The hot path, and clean by construction: route names, status, principal id,
            # validated request id and address (middlewares.py), never a header or a query.
            return True
        error = record.exc_info[1] if record.exc_info else None
        if record.name == _AIOHTTP_SERVER and isinstance(error, HttpProcessingError):
            _as_bad_request(record, error)
        else:
            self._scrub(record)
        return True

    def _scrub(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: logging would print both raw
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)


def _as_bad_request(record: logging.LogRecord, error: HttpProcessingError) -> None:
    """Rewrite aiohttp's "Error handling request" + traceback as one line, no raw bytes.

    The parser's message quotes the offending bytes (a header line with its credential, or
    only the continuation line of an obs-fold, which no pattern could recognise), so only
    the reason before the quotation is kept.
    """
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit: keep aiohttp's words only
        message = str(record.msg)
    first_line = str(error.message).split("\n", 1)[0]
    reason = _QUOTATION.split(first_line, 1)[0].strip(" .") or type(error).__name__
    record.msg = "%s: %s (%d)"
    record.args = (redact(message), redact(reason[:120]), error.code)
    record.exc_info, record.exc_text, record.stack_info = None, None, None


class BatchingStreamHandler(logging.Handler):
    """Formats on the caller's thread, writes on its own: one write per batch of lines.

    WARNING and above are written before `emit` returns (with what waited before them), so
    a problem is never held back; the rest within FLUSH_INTERVAL, and all of it on `flush`
    and `close` (logging's shutdown at exit).
    """

    def __init__(
        self, stream: TextIO | None = None, interval: float | None = FLUSH_INTERVAL
    ) -> None:
        """`interval` None: no writer thread; only warnings, full batches and flush write."""
        super().__init__()
        self._stream = stream if stream is not None else sys.stderr
        self._lines: list[str] = []
        self._wake = threading.Event()
        self._closed = False
        if interval is not None:
            threading.Thread(
                target=self._write_periodically, args=(interval,), daemon=True, name="log-writer"
            ).start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted line (the handler's lock is held: see Handler.handle)."""
        try:
            self._lines.append(self.format(record) + "\n")
        except Exception:  # as logging's own handlers do: never raise into the caller
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._lines) >= MAX_BATCH:
            self._write_locked()

    def _write_locked(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            for chunk in _whole_line_chunks(lines):
                self._stream.write(chunk)
                self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: the lines are gone
            pass

    def flush(self) -> None:
        """Write whatever waits."""
        self.acquire()
        try:
            self._write_locked()
        finally:
            self.release()

    def _write_periodically(self, interval: float) -> None:
        while not self._closed:
            self._wake.wait(interval)
            self.flush()

    def close(self) -> None:
        """Write what waits and stop the writer thread."""
        self._closed = True
        self._wake.set()
        self.flush()
        super().close()


def _whole_line_chunks(lines: list[str]) -> list[str]:
    """The lines joined into writes of at most ATOMIC_WRITE bytes (a longer line alone)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode("utf-8", "surrogateescape"))
        if current and size + length > ATOMIC_WRITE:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        chunks.append("".join(current))
    return chunks


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once, for the whole process."""
    # Fields no format here prints: not gathered for every record (the logging HOWTO's
    # "Optimization" section names these switches).
    logging._srcfile = None  # caller's file and line
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingStreamHandler()
    handler.addFilter(RedactingFilter())  # on the handler: records of every logger pass it
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
