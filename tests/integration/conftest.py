"""Real servers for integration tests: a replay of captured Ray exporters and a real Prometheus scraping it.

Fixtures (session-scoped, so Prometheus starts once per run):

- ``replay_exporter`` → ``ReplayExporter``: the 14 captured scrapes of a fake Ray 2.60 cluster, every original
  exporter on its own 127.0.0.1 port, playing frames 6–9 (``DECODE_BACKED_UP``) in a loop, one frame per
  second. Tests that ``hold``/``play`` other frames must restore ``replay_exporter.play()`` afterwards.
- ``prometheus_server`` → ``replay.PrometheusServer``: Prometheus (scrape interval 1 s) scraping those
  exporters, ready and with every target up. ``wait_for_series(promql)`` waits until a query has answers
  (e.g. until ``rate()`` has two samples to work with).
- ``prometheus_url`` → its base URL, e.g. ``http://127.0.0.1:41234``.

The capture is ``tests/integration/fixtures/ray-2.60-two-stage/scrapes.tgz``, part of the repository: a
missing capture fails the tests that replay it. Without the ``prometheus`` binary the tests are skipped,
unless ``CI`` is set: there a missing server is a broken build, not a reason to skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.replay import PrometheusServer, PrometheusStartError, ReplayExporter, load_frames
from tests.support.programs import prometheus_binary

CAPTURE = Path(__file__).parent / "fixtures" / "ray-2.60-two-stage" / "scrapes.tgz"
"""The Ray capture (see :mod:`tests.integration.replay`)."""


@pytest.fixture(scope="session")
def replay_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayExporter]:
    if not CAPTURE.is_file():
        pytest.fail(f"the Ray capture {CAPTURE} is missing from the repository")
    frames = load_frames(CAPTURE, tmp_path_factory.mktemp("capture"))
    replay = ReplayExporter(frames)
    replay.start()
    replay.play()
    try:
        yield replay
    finally:
        replay.stop()


@pytest.fixture(scope="session")
def prometheus_server(
    replay_exporter: ReplayExporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    binary = prometheus_binary()
    try:
        server = PrometheusServer.start(
            binary, tmp_path_factory.mktemp("prometheus"), replay_exporter.addresses
        )
    except PrometheusStartError as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus_url(prometheus_server: PrometheusServer) -> str:
    return prometheus_server.url
