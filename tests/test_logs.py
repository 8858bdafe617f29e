"""Log lines: batched writes that lose nothing and hold no warning back; both formats."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from gateway.runtime.logs import (
    ATOMIC_WRITE,
    FLUSH_INTERVAL,
    BatchingStreamHandler,
    JsonFormatter,
    TextFormatter,
)


def record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("gateway.access", level, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


@pytest.fixture
def handler() -> tuple[BatchingStreamHandler, io.StringIO]:
    stream = io.StringIO()
    made = BatchingStreamHandler(stream)
    made.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return made, stream


def test_info_lines_wait_for_the_writer_then_come_in_order(
    handler: tuple[BatchingStreamHandler, io.StringIO],
) -> None:
    made, stream = handler
    for n in range(5):
        made.handle(record(f"line {n}"))
    deadline = time.monotonic() + 10 * FLUSH_INTERVAL + 5
    while stream.getvalue().count("\n") < 5:
        assert time.monotonic() < deadline, "the writer thread never wrote"
        time.sleep(FLUSH_INTERVAL / 4)
    assert stream.getvalue() == "".join(f"INFO line {n}\n" for n in range(5))
    made.close()


def test_a_warning_is_written_at_once_with_what_waited_before_it() -> None:
    stream = io.StringIO()
    made = BatchingStreamHandler(stream, interval=None)  # only emit and close write
    made.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    made.handle(record("before"))
    assert stream.getvalue() == ""
    made.handle(record("trouble", logging.WARNING))
    assert stream.getvalue() == "INFO before\nWARNING trouble\n"
    made.handle(record("after"))
    made.close()  # logging's shutdown at exit: nothing is lost
    assert stream.getvalue().endswith("INFO after\n")


def test_a_full_batch_is_written_without_waiting() -> None:
    stream = io.StringIO()
    made = BatchingStreamHandler(stream, interval=None)
    for n in range(512):
        made.handle(record(f"{n}"))
    assert stream.getvalue().count("\n") == 512
    made.close()


def test_a_broken_stream_loses_lines_but_never_raises() -> None:
    stream = io.StringIO()
    made = BatchingStreamHandler(stream)
    stream.close()
    made.handle(record("into the void", logging.ERROR))
    made.close()


def test_formats_carry_the_time_to_the_millisecond_and_the_access_fields() -> None:
    line = record("GET about 200", request_id="r1", status=200)
    line.created, line.msecs = 1795737600.25, 250.0  # 2026-11-27T00:00:00.250Z
    document = json.loads(JsonFormatter().format(line))
    assert document["ts"] == "2026-11-27T00:00:00.250Z"
    assert document["request_id"] == "r1"
    assert document["status"] == 200
    text = TextFormatter().format(line)
    assert text.endswith(",250 INFO gateway.access: GET about 200")
    expected = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1795737600))
    assert text.startswith(expected)


def test_writes_end_on_whole_lines_within_the_atomic_size() -> None:
    class Recording(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return super().write(text)

    stream = Recording()
    made = BatchingStreamHandler(stream, interval=None)
    made.setFormatter(logging.Formatter("%(message)s"))
    for n in range(200):
        made.handle(record(f"{n:03d} " + "é" * 60))  # 125 bytes a line in UTF-8
    made.close()
    assert len(stream.writes) > 1
    for written in stream.writes:
        assert written.endswith("\n")
        assert len(written.encode()) <= ATOMIC_WRITE
    assert stream.getvalue().count("\n") == 200
