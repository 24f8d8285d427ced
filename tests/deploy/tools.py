"""Where the deploy files are, and the real tools their checks run (found, or a skip — a failure on CI)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.programs import require

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def require_tool(name: str, package: str) -> str:
    """The path of ``name`` (on PATH or in /usr/bin); without it the test is skipped, or fails on CI."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    return require(found, f"{name!r} is not installed (`make system-deps`, or apt-get install {package})")
