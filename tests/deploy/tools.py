"""The real tools the deploy checks run (systemd-analyze, promtool): found, or a skip — a failure on CI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def require_tool(name: str, package: str) -> str:
    """The path of ``name``; without it the test is skipped, unless ``CI`` is set (then it fails)."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if found is None:
        reason = f"{name!r} is not installed (`make system-deps`, or apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)
    return found
