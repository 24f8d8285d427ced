"""A tiny stand-in for Prometheus' HTTP query API, for daemons that run as their own process.

It answers ``GET /api/v1/query`` the way Prometheus would for raytide's default templates, with one
Ray Data stage (``MapBatches(Infer)_2`` of ``dataset_1``) whose backlog, throughput and busy slots the
test sets; node and autoscaler series are absent (the daemon takes node counts from the GCS) and no
scrape target is down. ``mode`` switches it to answering garbage (``"garbage"``: an HTML page with status
200) or errors (``"error"``: HTTP 503). Stop it to make the port refuse connections.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from autoscaler.devcluster.cluster import free_port

DATASET = "dataset_1"
OPERATOR = "MapBatches(Infer)_2"

Mode = Literal["ok", "garbage", "error"]


class FakePrometheus:
    def __init__(self, *, backlog: float = 0.0, rate: float = 1.0, slots: float = 1.0) -> None:
        self.backlog = backlog
        self.rate = rate
        self.slots = slots
        self.mode: Mode = "ok"
        self.queries = 0
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def value_for(self, promql: str) -> float | None:
        """The stage's value for one of raytide's templates; None for the templates with no series."""
        if "timestamp(" in promql:
            return 1.0  # seconds since the stage's series was last updated: fresh
        if "deriv(" in promql:
            return self.rate  # arrival = throughput + growth of the queue (steady here)
        if "ray_data_operator_queued_blocks" in promql:
            return self.backlog
        if "ray_data_num_task_inputs_processed" in promql:
            return self.rate
        if "ray_data_num_tasks_running" in promql:
            return self.slots
        return None

    def start(self) -> FakePrometheus:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.queries += 1
                url = urllib.parse.urlsplit(self.path)
                if fake.mode == "error":
                    self._send(503, "text/plain", b"service unavailable")
                    return
                if fake.mode == "garbage":
                    self._send(200, "text/html", b"<html><body>oops</body></html>")
                    return
                if url.path != "/api/v1/query":
                    self._send(404, "text/plain", b"not found")
                    return
                promql = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                value = fake.value_for(promql)
                result = []
                if value is not None:
                    labels = {"dataset": DATASET, "operator": OPERATOR}
                    result.append({"metric": labels, "value": [time.time(), repr(float(value))]})
                body = {"status": "success", "data": {"resultType": "vector", "result": result}}
                self._send(200, "application/json", json.dumps(body).encode())

            def _send(self, status: int, ctype: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-prometheus", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
