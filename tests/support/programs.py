"""The programs tests run: the servers (Prometheus, mosquitto), the ``ray`` CLI and ``raytide`` itself.

A missing server or ``ray`` CLI skips the test, unless ``CI`` is set: there it is a broken build, so the
test fails instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def require(found: str | None, reason: str) -> str:
    """``found``, or skip (fail when ``CI`` is set) saying ``reason``."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)
    return found


def server_binary(name: str, packaged: str, install: str) -> str:
    """The path of server ``name``: on PATH, or where its Debian package puts it (``packaged``)."""
    found = shutil.which(name) or (packaged if Path(packaged).exists() else None)
    return require(found, f"the {name!r} binary is not installed ({install})")


def prometheus_binary() -> str:
    return server_binary(
        "prometheus", "/usr/bin/prometheus", "`make system-deps` or apt-get install prometheus"
    )


def mosquitto_binary() -> str:
    return server_binary(
        "mosquitto", "/usr/sbin/mosquitto", "`make system-deps` or apt-get install mosquitto"
    )


def require_ray_cli() -> None:
    """The ``ray`` CLI, which starts and stops the local clusters: beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("ray")
    require(str(beside) if beside.exists() else shutil.which("ray"), "the `ray` CLI is not installed")


def raytide_command() -> list[str]:
    """The command line that runs ``raytide``: the console script, or the CLI module when it is missing."""
    exe = Path(sys.executable).with_name("raytide")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from autoscaler.app.cli import main; main()"]
