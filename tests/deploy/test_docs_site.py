"""The docs site: ``mkdocs build --strict`` (a broken link or anchor, a page left out of the nav fail), and
the pages that describe the deploy files keep up with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import dashboard
from tests.deploy.tools import REPO


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs-material is a test dependency (make install)")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "operations" / "alerts" / "index.html").exists()


def test_grafana_page_lists_every_panel_with_its_query() -> None:
    page = (REPO / "docs" / "operations" / "grafana.md").read_text(encoding="utf-8")
    for p in dashboard.panels(dashboard.load()):
        assert f"| {p['title']} |" in page, p["title"]
    for q in dashboard.queries():
        assert f"`{q.expr.replace('|', chr(92) + '|')}`" in page, q.where
