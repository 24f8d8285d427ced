"""The daemon's own HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and ``POST /nudge``.

A small HTTP/1.1 server on the daemon's event loop (asyncio streams), one request per connection.
``POST /nudge`` needs a bearer token when one is configured, and is refused beyond loopback without one;
the GET routes stay open (probes and Prometheus). Routes, answers and limits are listed in
docs/own-metrics.md ("HTTP endpoint"); why it is built this way, in docs/architecture.md ("Publishing").
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder

from autoscaler.adapters.telemetry import HealthReport
from autoscaler.core.config import is_loopback_host

__all__ = ["HealthSource", "HttpEndpoint", "TokenFileError", "read_token"]

log = logging.getLogger(__name__)

_ALLOWED = "GET, HEAD"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 256 * 1024
_MAX_TOKEN_BYTES = 4096
_REDACTED = "<redacted>"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
"""The ``user:password@`` of a URL in a text."""
_NUDGE_OUTCOMES = ("accepted", "rate_limited", "unauthorized", "refused")


class TokenFileError(OSError):
    """The nudge token file cannot be used: unreadable, empty, or not one line of visible ASCII."""


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped), or :class:`TokenFileError`."""
    where = f"daemon.http_token_file {path}"
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
    except OSError as e:
        raise TokenFileError(f"{where}: cannot read it: {e.strerror or e}") from None
    if len(raw) > _MAX_TOKEN_BYTES:
        raise TokenFileError(f"{where}: longer than {_MAX_TOKEN_BYTES} bytes; a token is one short line")
    token = raw.strip()
    if not token:
        raise TokenFileError(f"{where}: the file is empty; put the token in it (one line)")
    if not all(0x21 <= b <= 0x7E for b in token):
        raise TokenFileError(f"{where}: the token must be one line of visible ASCII characters (no spaces)")
    return token.decode("ascii")


class HealthSource(Protocol):
    """Where the endpoint learns liveness and readiness (``telemetry.Telemetry`` is one)."""

    def health(self) -> HealthReport: ...


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Connection:
    """One client connection: ``head`` while its request head is awaited, ``answered`` once it is not."""

    __slots__ = ("evicted", "phase", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.phase: Literal["head", "answered"] = "head"
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        self.writer.transport.abort()


_Answer = tuple[HTTPStatus, bytes, str, dict[str, str]]


class HttpEndpoint:
    """An asyncio HTTP/1.1 server for raytide's metrics and health probes.

    ``port=0`` binds a free port; ``port`` tells the bound one after ``start()``. Bound to 127.0.0.1 by
    default: exposing it beyond the host is a deliberate choice (``host="0.0.0.0"``), since the metrics
    describe the cluster. ``on_nudge`` enables ``POST /nudge`` (202: tick now instead of at the next
    interval; 429 when it returns False, i.e. declines a nudge that came too soon). With ``token_file``
    (read by ``start()``: :class:`TokenFileError` when it cannot be used) a nudge needs
    ``Authorization: Bearer <token>`` (else 401); without one, a nudge is refused (403) unless ``host`` is a
    loopback address. The request head must arrive within ``read_timeout`` seconds and ``max_header_bytes``
    bytes (else 408 / 431). At most ``max_connections`` are held open: past it, the one that has waited
    longest for its request head (else the oldest already answered) is closed to make room, so a crowd of
    idle connections cannot keep a probe out. ::

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
        on_nudge: Callable[[], bool | None] | None = None,
        token_file: Path | None = None,
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
        self._token_file = token_file
        self._token: str | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        """Insertion-ordered: the oldest first."""
        self._port: int | None = None
        self._closing = False
        self.nudges: Counter | None = None
        if on_nudge is not None:
            self.nudges = Counter(
                "raytide_nudges",
                "POST /nudge requests, by outcome: accepted, rate_limited (429), unauthorized (401: no or a "
                "wrong token), refused (403: beyond loopback without a token file).",
                ["outcome"],
                registry=registry,
            )
            for outcome in _NUDGE_OUTCOMES:
                self.nudges.labels(outcome=outcome)

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

    @property
    def open_connections(self) -> int:
        """Client connections held open now (evicted ones excluded)."""
        return sum(1 for c in self._connections.values() if not c.evicted)

    async def start(self) -> None:
        """Read the token file (if any), then bind and serve."""
        if self._server is not None:
            raise RuntimeError("the endpoint is already started")
        if self._token_file is not None:
            self._token = read_token(self._token_file)
        self._closing = False
        # The stream limit doubles as the header size limit: readuntil() gives up past it.
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._requested_port, limit=self._max_header_bytes
        )
        sockets = self._server.sockets
        self._port = int(sockets[0].getsockname()[1]) if sockets else self._requested_port
        log.info("serving /metrics, /healthz and /readyz", extra={"url": self.url})
        if self._on_nudge is not None and self._token is None and not is_loopback_host(self._host):
            log.warning(
                "%s listens beyond loopback without daemon.http_token_file: POST /nudge is refused (403); "
                "/metrics, /healthz and /readyz are open to whoever reaches the port",
                self.url,
            )

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
            await asyncio.gather(*list(self._connections), return_exceptions=True)
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
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            # aclose() ends the connections it finds; the task then ends normally (asyncio's stream server
            # logs a cancelled connection task as an error).
            if not self._closing:
                raise

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.open_connections >= self._max_connections:
            self._make_room()
        conn = _Connection(writer)
        self._connections[task] = conn
        try:
            await self._serve(reader, writer, conn)
        except (ConnectionError, TimeoutError):
            # The client went away or stopped reading (or was evicted): nothing left to tell it.
            pass
        except Exception:
            # One broken request must not take the endpoint down with it.
            log.exception("http endpoint: unexpected error while serving a request")
        finally:
            try:
                if not conn.evicted:
                    await self._linger(reader, writer)
            finally:
                self._connections.pop(task, None)
                writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _make_room(self) -> None:
        # A connection still waiting for its request head costs a slot and gives nothing: the one that has
        # waited longest goes first (a probe sends its head at once). Then the oldest already answered.
        for phase in ("head", "answered"):
            for conn in self._connections.values():
                if conn.phase == phase and not conn.evicted:
                    conn.evict()
                    return

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

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
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
            if not conn.evicted:
                await self._respond(writer, HTTPStatus.BAD_REQUEST, b"incomplete request\n", _TEXT)
            return
        finally:
            conn.phase = "answered"
        try:
            method, path, headers = _parse_head(head)
        except _BadRequest as e:
            await self._respond(writer, e.status, (e.detail + "\n").encode(), _TEXT)
            return
        status, body, content_type, extra = self._route(method, path, headers)
        await self._respond(writer, status, body, content_type, extra, head_only=method == "HEAD")

    def _route(self, method: str, path: str, headers: Mapping[str, str]) -> _Answer:
        if path == "/nudge" and self._on_nudge is not None:
            if method != "POST":
                return HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", _TEXT, {"Allow": "POST"}
            return self._nudge(headers)
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
                doc["reasons"] = [self._redact(r) for r in report.reasons]
        else:
            ok = report.ready
            doc = {"status": "ready" if ok else "not ready", "state": report.state}
            if not ok:
                doc["reasons"] = [self._redact(r) for r in report.reasons]
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        return status, (json.dumps(doc) + "\n").encode(), _JSON, {}

    def _nudge(self, headers: Mapping[str, str]) -> _Answer:
        assert self._on_nudge is not None and self.nudges is not None
        if self._token is None and not is_loopback_host(self._host):
            self.nudges.labels(outcome="refused").inc()
            why = b"POST /nudge is refused: this endpoint listens beyond loopback and has no token file\n"
            return HTTPStatus.FORBIDDEN, why, _TEXT, {}
        if self._token is not None and not self._authorized(headers.get("authorization", "")):
            self.nudges.labels(outcome="unauthorized").inc()
            why = b"POST /nudge needs the header Authorization: Bearer <token>\n"
            return HTTPStatus.UNAUTHORIZED, why, _TEXT, {"WWW-Authenticate": 'Bearer realm="raytide"'}
        if self._on_nudge() is False:
            self.nudges.labels(outcome="rate_limited").inc()
            why = b"too many nudges: one was accepted a moment ago and its tick is coming\n"
            return HTTPStatus.TOO_MANY_REQUESTS, why, _TEXT, {"Retry-After": "1"}
        self.nudges.labels(outcome="accepted").inc()
        return HTTPStatus.ACCEPTED, b'{"status": "nudged"}\n', _JSON, {}

    def _authorized(self, authorization: str) -> bool:
        assert self._token is not None
        scheme, _, given = authorization.strip().partition(" ")
        # Compared in constant time, as bytes: the header may hold any latin-1 text.
        expected = self._token.encode("ascii")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), expected)

    def _redact(self, text: str) -> str:
        """``text`` without the token or a URL's ``user:password@`` (health reasons quote errors)."""
        text = _USERINFO.sub(rf"\1{_REDACTED}@", text)
        return text.replace(self._token, _REDACTED) if self._token else text

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
