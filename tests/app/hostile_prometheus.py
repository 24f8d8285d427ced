"""A Prometheus stand-in on 127.0.0.1 that answers what a test scripts: JSON, an error page, a dropped
connection, or an answer dripped one byte a second. It remembers the Authorization header it was sent."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

PROBE_QUERY = "vector(1)"
"""The query `raytide recommend` asks first."""


@dataclass(frozen=True, slots=True)
class Answer:
    kind: Literal["json", "raw", "drop", "drip"] = "json"
    status: int = 200
    body: Any = None
    content_type: str = "application/json"


def vector(*series: tuple[dict[str, str], float]) -> Answer:
    result = [{"metric": labels, "value": [time.time(), repr(float(v))]} for labels, v in series]
    return Answer(body={"status": "success", "data": {"resultType": "vector", "result": result}})


OK_PROBE = vector(({}, 1.0))


class HostilePrometheus:
    """``answer(promql)`` decides each answer; the probe (``vector(1)``) is answered normally unless
    ``answer`` handles it too (``scripts_probe=True``)."""

    def __init__(self, answer: Callable[[str], Answer], *, scripts_probe: bool = False) -> None:
        self.answer = answer
        self.scripts_probe = scripts_probe
        self.authorizations: list[str | None] = []
        self.queries: list[str] = []
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                promql = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                server.authorizations.append(self.headers.get("Authorization"))
                server.queries.append(promql)
                answer = (
                    OK_PROBE if promql == PROBE_QUERY and not server.scripts_probe else server.answer(promql)
                )
                if answer.kind == "drop":
                    self.close_connection = True
                    return
                payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                head = (
                    f"HTTP/1.1 {answer.status} X\r\nContent-Type: {answer.content_type}\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                ).encode()
                if answer.kind == "drip":
                    for byte in head + payload:
                        if server._stop.wait(1.0):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                self.wfile.write(head + payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-prometheus")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    def __enter__(self) -> HostilePrometheus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
