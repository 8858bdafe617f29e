"""Running the app: aiohttp's runner, with a deadline for each connection's first headers.

aiohttp has no timeout for reading request headers, so a client that trickles them in
(slowloris) would keep its connection for ever; here a connection that has not sent a
complete header block within `header_timeout` seconds is closed. Idle keep-alive
connections are closed by aiohttp's own keepalive_timeout.

Every answer says `Server: lrs-gateway`, never the Python and aiohttp versions (which tell
an attacker which advisories apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web, web_response

__all__ = ["SERVER_NAME", "run"]

SERVER_NAME = "lrs-gateway"
_END_OF_HEADERS = b"\r\n\r\n"
log = logging.getLogger(__name__)


def _already_stopping() -> None:
    log.info("already stopping: letting in-flight requests finish")


class _HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's protocol; closes the transport if the headers do not come in time."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()


class _GuardedServer:
    """aiohttp's Server, handing out wrapped protocols; everything else is the Server's."""

    def __init__(self, server: web.Server, timeout: float) -> None:
        self._server = server
        self._timeout = timeout

    def __call__(self) -> asyncio.Protocol:
        return _HeaderDeadline(cast(asyncio.Protocol, self._server()), self._timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return cast(web.Server, _GuardedServer(server, self._header_timeout))


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    header_timeout: float,
    on_listening: Callable[[], None],
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM, then let in-flight requests finish (like web.run_app).

    `reuse_port`: share the port with other processes (SO_REUSEPORT), for workers.
    """
    # aiohttp has no setting for it and fills the header in where no hook of the app runs
    # (a request it cannot parse is answered before routing): its default, read when each
    # answer is sent, is replaced for this process, which only serves the gateway.
    setattr(web_response, "SERVER_SOFTWARE", SERVER_NAME)  # noqa: B010 (not exported)
    loop = asyncio.new_event_loop()
    runner = _GuardedRunner(
        app, header_timeout, access_log=None, handle_signals=True, shutdown_timeout=shutdown_timeout
    )

    async def serve() -> None:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
            on_listening()
            await asyncio.Event().wait()  # until a signal ends the loop
        finally:
            await runner.cleanup()

    task = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        log.info(
            "stopping: no new connections; in-flight requests get up to %g s to finish",
            shutdown_timeout,
        )
    finally:
        if not task.done():
            # A second signal (systemd signals every process of the unit, and a supervisor
            # passes its own on) must not cut the drain short.
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, _already_stopping)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        for pending in asyncio.all_tasks(loop):
            pending.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        log.info("stopped")
