"""Real servers for integration tests: a replay of captured Ray exporters and a real Prometheus scraping it.

Fixtures (session-scoped, so Prometheus starts once per run):

- ``replay_exporter`` → ``ReplayExporter``: the 14 captured scrapes of a fake Ray 2.60 cluster, every original
  exporter on its own 127.0.0.1 port, playing frames 6–9 (``DECODE_BACKED_UP``) in a loop, one frame per
  second. Tests that ``hold``/``play`` other frames must restore ``replay_exporter.play()`` afterwards.
- ``prometheus_server`` → ``replay.PrometheusServer``: Prometheus (scrape interval 1 s) scraping those
  exporters, ready and with every target up. ``wait_for_series(promql)`` waits until a query has answers
  (e.g. until ``rate()`` has two samples to work with).
- ``prometheus_url`` → its base URL, e.g. ``http://127.0.0.1:41234``.

The capture is ``<repo>/../shared/fixtures/ray-2.60-two-stage/scrapes.tgz``; ``RAYTIDE_FIXTURES`` names
another fixtures directory (or the ``.tgz`` itself). Without the ``prometheus`` binary the tests are skipped,
unless ``CI`` is set: there a missing server is a broken build, not a reason to skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.replay import PrometheusServer, PrometheusStartError, ReplayExporter, load_frames

REPO = Path(__file__).resolve().parents[2]
CAPTURE = Path("ray-2.60-two-stage") / "scrapes.tgz"


def capture_archive() -> Path:
    override = os.environ.get("RAYTIDE_FIXTURES")
    if override:
        path = Path(override)
        return path if path.suffix in (".tgz", ".gz") else path / CAPTURE
    return REPO.parent / "shared" / "fixtures" / CAPTURE


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        reason = "the 'prometheus' binary is not installed (`make system-deps` or apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def replay_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayExporter]:
    archive = capture_archive()
    if not archive.exists():
        pytest.skip(
            f"the Ray capture {archive} does not exist (set RAYTIDE_FIXTURES to its fixtures directory)"
        )
    frames = load_frames(archive, tmp_path_factory.mktemp("capture"))
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
