"""The daemon's own HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and ``POST /nudge``.

A small HTTP/1.1 server on the daemon's event loop (asyncio streams), one request per connection. Routes,
answers and limits are listed in docs/own-metrics.md ("HTTP endpoint"); why it is built this way, in
docs/architecture.md ("Publishing").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from autoscaler.adapters.telemetry import HealthReport

__all__ = ["HealthSource", "HttpEndpoint"]

log = logging.getLogger(__name__)

_ALLOWED = "GET, HEAD"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 256 * 1024


class HealthSource(Protocol):
    """Where the endpoint learns liveness and readiness (``telemetry.Telemetry`` is one)."""

    def health(self) -> HealthReport: ...


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class HttpEndpoint:
    """An asyncio HTTP/1.1 server for raytide's metrics and health probes.

    ``port=0`` binds a free port; ``port`` tells the bound one after ``start()``. Bound to 127.0.0.1 by
    default: exposing it beyond the host is a deliberate choice (``host="0.0.0.0"``), since the metrics
    describe the cluster. ``on_nudge`` enables ``POST /nudge`` (202: tick now instead of at the next
    interval). The request head must arrive within ``read_timeout`` seconds and ``max_header_bytes`` bytes
    (else 408 / 431); at most ``max_connections`` are served at once (the rest get 503 at once). ::

        endpoint = HttpEndpoint(registry=telemetry.registry, health=telemetry, port=9464)
        await endpoint.start()
        ...
        await endpoint.aclose()
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        health: HealthSource,
        host: str = "127.0.0.1",
        port: int = 0,
        read_timeout: float = 5.0,
        write_timeout: float = 10.0,
        max_header_bytes: int = 8192,
        max_connections: int = 64,
        on_nudge: Callable[[], None] | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if read_timeout <= 0 or write_timeout <= 0:
            raise ValueError("read_timeout and write_timeout must be > 0")
        if max_header_bytes < 256:
            raise ValueError(f"max_header_bytes must be at least 256, got {max_header_bytes}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._registry = registry
        self._health = health
        self._on_nudge = on_nudge
        self._host = host
        self._requested_port = port
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_header_bytes = max_header_bytes
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._port: int | None = None
        self._closing = False

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the free one chosen when constructed with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("the endpoint is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the endpoint is already started")
        self._closing = False
        # The stream limit doubles as the header size limit: readuntil() gives up past it.
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._requested_port, limit=self._max_header_bytes
        )
        sockets = self._server.sockets
        self._port = int(sockets[0].getsockname()[1]) if sockets else self._requested_port
        log.info("serving /metrics, /healthz and /readyz", extra={"url": self.url})

    async def aclose(self) -> None:
        """Stop accepting, end the connections being served, and wait until all of it is done."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- connections ----------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self._max_connections:
                await self._respond(writer, HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections\n", _TEXT)
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            # The client went away or stopped reading: nothing left to tell it.
            pass
        except Exception:
            # One broken request must not take the endpoint down with it.
            log.exception("http endpoint: unexpected error while serving a request")
        finally:
            try:
                await self._linger(reader, writer)
            finally:
                self._connections.discard(task)
                writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing a socket with unread input makes the kernel send a reset, which can destroy the answer
        # before the client reads it (a 400 or 431 cut short is a mystery to debug). So: end our side,
        # then read and discard what the client still sends, for a bounded time and amount.
        with contextlib.suppress(ConnectionError, TimeoutError, OSError, RuntimeError):
            if self._closing or writer.is_closing() or not writer.can_write_eof():
                return
            writer.write_eof()
            discarded = 0
            async with asyncio.timeout(_LINGER_SECONDS):
                while discarded < _LINGER_BYTES:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    discarded += len(chunk)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            await self._respond(writer, HTTPStatus.REQUEST_TIMEOUT, b"request head too slow\n", _TEXT)
            return
        except asyncio.LimitOverrunError:
            await self._respond(
                writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n", _TEXT
            )
            return
        except asyncio.IncompleteReadError:
            await self._respond(writer, HTTPStatus.BAD_REQUEST, b"incomplete request\n", _TEXT)
            return
        try:
            method, path, headers = _parse_head(head)
        except _BadRequest as e:
            await self._respond(writer, e.status, (e.detail + "\n").encode(), _TEXT)
            return
        status, body, content_type, extra = self._route(method, path, headers)
        await self._respond(writer, status, body, content_type, extra, head_only=method == "HEAD")

    def _route(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[HTTPStatus, bytes, str, dict[str, str]]:
        if path == "/nudge" and self._on_nudge is not None:
            if method != "POST":
                return HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", _TEXT, {"Allow": "POST"}
            self._on_nudge()
            return HTTPStatus.ACCEPTED, b'{"status": "nudged"}\n', _JSON, {}
        if path not in ("/metrics", "/healthz", "/readyz"):
            return HTTPStatus.NOT_FOUND, b"not found\n", _TEXT, {}
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", _TEXT, {"Allow": _ALLOWED}
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return HTTPStatus.OK, encoder(self._registry), content_type, {}
        report = self._health.health()
        if path == "/healthz":
            ok = report.alive
            doc: dict[str, object] = {"status": "alive" if ok else "dead", "state": report.state}
            if report.last_tick_age_seconds is not None:
                doc["last_tick_age_seconds"] = round(report.last_tick_age_seconds, 3)
            if not ok:
                doc["reasons"] = list(report.reasons)
        else:
            ok = report.ready
            doc = {"status": "ready" if ok else "not ready", "state": report.state}
            if not ok:
                doc["reasons"] = list(report.reasons)
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        return status, (json.dumps(doc) + "\n").encode(), _JSON, {}

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        extra: Mapping[str, str] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self._write_timeout):
            await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path (query dropped) and lower-cased headers of a request head, or ``_BadRequest``."""
    lines = head.decode("latin-1")[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not method.isascii() or not method.isalpha() or not method.isupper():
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/") and version[5:6].isdigit():
            raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is supported")
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
    if not target or any(c.isspace() or not c.isprintable() for c in target):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request target")
    if target.startswith("/"):
        path = target.split("?", 1)[0]
    elif target.startswith(("http://", "https://")):
        path = urlsplit(target).path or "/"
    else:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name or "\t" in name:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if version == "HTTP/1.1" and "host" not in headers:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "HTTP/1.1 request without Host header")
    return method, path, headers
