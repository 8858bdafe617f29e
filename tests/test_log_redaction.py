"""No credential in any log line: aiohttp's bad-request records, and every other record.

A malformed Authorization line (a NUL byte, an obs-fold continuation) makes aiohttp log the
raw header line with its traceback; the gateway's log handler turns that into one clean line
and scrubs credentials from whatever else any logger writes (red-team issue 13, finding 4).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from support import credential, free_port, wait_until_serving, write_config

from gateway.runtime.logs import (
    BatchingStreamHandler,
    JsonFormatter,
    RedactingFilter,
    TextFormatter,
    redact,
)

RUN_TIMEOUT = 20.0
PASSWORD = "Sekr1t-Pw-n3Xv"
TOKEN = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
BEARER = "B3arer-T0ken-q5Wm-B3arer-T0ken"

# The raw requests of the report: the header line is malformed, so aiohttp's parser fails.
MALFORMED = {
    "NUL byte": b"GET /whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
    + TOKEN.encode()
    + b"\x00\r\nConnection: close\r\n\r\n",
    "obs-fold": b"GET /whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic\r\n "
    + TOKEN.encode()
    + b"\r\nConnection: close\r\n\r\n",
    "Bearer, NUL byte": b"GET /whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + BEARER.encode()
    + b"\x00\r\nConnection: close\r\n\r\n",
    "Proxy-Authorization, NUL byte": b"GET /whoami HTTP/1.1\r\nHost: x\r\n"
    b"Proxy-Authorization: Basic " + TOKEN.encode() + b"\x00\r\nConnection: close\r\n\r\n",
    "too long": b"GET /whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
    + TOKEN.encode()
    + b"A" * 9000
    + b"\r\nConnection: close\r\n\r\n",
}


def assert_no_credential(text: str) -> None:
    for secret in (TOKEN, TOKEN[4:-4], PASSWORD, BEARER, BEARER[4:-4]):
        assert secret not in text, f"{secret!r} in:\n{text}"


async def send_raw(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()


# -- a real `serve`, its whole stderr grepped ------------------------------------------------


@pytest.mark.parametrize(
    ("log_args", "parser_env"),
    [
        ((), {}),  # the default: text lines at INFO, aiohttp's C parser
        (("--log-level", "DEBUG", "--log-format", "json"), {}),
        ((), {"AIOHTTP_NO_EXTENSIONS": "1"}),  # aiohttp's pure-Python parser words it otherwise
    ],
    ids=["text-info", "json-debug", "python-parser"],
)
async def test_serve_never_logs_a_malformed_authorization_line(
    tmp_path: Path, log_args: tuple[str, ...], parser_env: dict[str, str]
) -> None:
    port = free_port()
    write_config(
        tmp_path,
        f"http://127.0.0.1:{free_port()}/xAPI/",
        [credential("alice", PASSWORD, ["all"])],
        {"server": {"port": port}},
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LRS_GATEWAY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *log_args,
        "--config",
        str(tmp_path / "config.yaml"),
        "serve",
        cwd=tmp_path,
        env={**env, **parser_env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_serving(proc, f"http://127.0.0.1:{port}/__lbheartbeat__", RUN_TIMEOUT)
        for where, raw in MALFORMED.items():
            answer = await send_raw(port, raw)
            assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), (where, answer)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out, err = await proc.communicate()
    logs = (out + err).decode("utf-8", "replace")
    assert_no_credential(logs)
    assert "Traceback" not in logs
    # One clean line per refused request, naming the client and the parser's reason.
    refused = logs.count("Error handling request from 127.0.0.1: ")
    assert refused == len(MALFORMED), logs


# -- the scrubbing, unit by unit -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Basic {TOKEN}",
        f"b'Authorization: Basic {TOKEN}\\x00'",
        f"{{'Host': 'x', 'Authorization': 'Basic {TOKEN}'}}",
        f"<CIMultiDictProxy('Host': 'x', 'AUTHORIZATION': 'Basic {TOKEN}')>",
        f"proxy-authorization=Basic%20{TOKEN}&x=1",
        f"headers: authorization = Bearer {BEARER}",
        f"sent basic {TOKEN} and bearer {BEARER}",
        f"Authorization: Digest username=alice, response={PASSWORD}",
        f"Authorization: Basic\\r\\n {TOKEN}",
        f"http://alice:{PASSWORD}@lrs.internal/xAPI/",
        f"{{'username': 'alice', 'password': '{PASSWORD}'}}",
        f'basic_password={PASSWORD} client_secret: "{PASSWORD}"',
    ],
)
def test_redact_removes_every_form_of_credential(text: str) -> None:
    cleaned = redact(text)
    assert_no_credential(cleaned)
    assert "[redacted]" in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in (
        "GET statements 200 3.1ms principal=alice request_id=r1",
        "credentials file /etc/auth.json: 3 users loaded",
        "lrs-gateway 0.1.0 listening on http://127.0.0.1:8080/ (storage "
        "http://lrs.internal:8100/xAPI/)",
        "target t500: HTTP 500; 3 statements dead-lettered",
    ):
        assert redact(text) == text


def aiohttp_bad_request(raw_line: bytes) -> logging.LogRecord:
    """The record aiohttp's handle_error logs for a request its parser refused."""
    try:
        raise BadHttpMessage(f"Invalid header value char:\n\n  {raw_line!r}\n  ^")
    except BadHttpMessage:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("203.0.113.7",),
        exc_info,
    )


def through_handler(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=None)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(formatter)
    handler.handle(record)
    handler.close()
    return stream.getvalue()


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_an_aiohttp_bad_request_is_one_clean_line(formatter: logging.Formatter) -> None:
    line = through_handler(
        aiohttp_bad_request(b"Authorization: Basic " + TOKEN.encode() + b"\x00"), formatter
    )
    assert_no_credential(line)
    assert line.count("\n") == 1, line
    assert "Error handling request from 203.0.113.7: Invalid header value char (400)" in line
    assert "Traceback" not in line


def test_a_parser_error_of_another_logger_keeps_its_message_and_loses_the_credential() -> None:
    record = aiohttp_bad_request(b"Authorization: Basic " + TOKEN.encode() + b"\x00")
    record.name = "gateway.upstream.storage"
    record.msg, record.args = "storage answered: %s", ("junk",)
    text = through_handler(record, TextFormatter())
    assert_no_credential(text)
    assert "gateway.upstream.storage: storage answered: junk" in text
    assert "BadHttpMessage" in text  # the traceback stays (scrubbed): it is not a client's


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_messages_arguments_and_tracebacks_of_any_logger_are_scrubbed(
    formatter: logging.Formatter,
) -> None:
    try:
        raise RuntimeError(f"upstream echoed {{'Authorization': 'Bearer {BEARER}'}}")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.client",
        logging.ERROR,
        __file__,
        1,
        "request failed: %s %r",
        ("GET", {"Authorization": f"Basic {TOKEN}"}),
        exc_info,
    )
    text = through_handler(record, formatter)
    assert_no_credential(text)
    assert "request failed: GET" in text
    assert "RuntimeError: upstream echoed" in text
    if isinstance(formatter, JsonFormatter):
        assert "RuntimeError" in json.loads(text)["exception"]


def test_a_message_whose_arguments_do_not_fit_is_still_scrubbed() -> None:
    record = logging.LogRecord(
        "aiohttp.web", logging.WARNING, __file__, 1, "%s and %s", (f"Basic {TOKEN}",), None
    )
    text = through_handler(record, TextFormatter())
    assert_no_credential(text)
    assert "Basic [redacted]" in text


def test_access_lines_are_passed_on_untouched() -> None:
    # The access line holds no credential by construction (route names, ids): not scanned.
    fields: dict[str, Any] = {"principal": "alice"}
    record = logging.LogRecord(
        "gateway.access", logging.INFO, __file__, 1, "GET %(principal)s", (fields,), None
    )
    before = (record.msg, record.args)
    assert RedactingFilter().filter(record)
    assert (record.msg, record.args) == before


def test_redaction_takes_linear_time_on_hostile_text() -> None:
    """A long run of scheme-like characters without "://" once took quadratic time."""
    started = time.perf_counter()
    redact("auth " + "a." * 50_000 + " https://user:pw@host")
    assert time.perf_counter() - started < 1.0  # was about a minute
    assert redact("see https://user:pw@host/x") == "see https://user:[redacted]@host/x"
