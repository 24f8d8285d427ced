"""Where the exporter list comes from: Ray's service-discovery file, its dashboard, or a static list.

Each ``Discovery`` is asked once per scrape round and answers ``Target``s parsed from Prometheus file_sd /
http_sd JSON, or raises ``DiscoveryError`` with a message that says where it looked and what to do.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import httpx

from autoscaler.core.queries import PrometheusConfigError
from autoscaler.core.redact import redact_text, redact_url

__all__ = [
    "DASHBOARD_SD_PATH",
    "DEFAULT_DISCOVERY_FILE",
    "DashboardDiscovery",
    "Discovery",
    "DiscoveryError",
    "FileDiscovery",
    "StaticDiscovery",
    "Target",
    "excerpt",
    "parse_service_discovery",
]

DEFAULT_DISCOVERY_FILE = Path("/tmp/ray/prom_metrics_service_discovery.json")
"""Where Ray (2.60) keeps its Prometheus file_sd list: the dashboard writes
``<session dir>/prom_metrics_service_discovery.json`` every 5 s and links it here (``<temp dir>``)."""

DASHBOARD_SD_PATH = "/api/prometheus/sd"
"""The dashboard's HTTP service discovery endpoint (same JSON as the file)."""

_EXCERPT = 200


def excerpt(text: str) -> str:
    """An answer's text on one line, cut short, for quoting in an error message."""
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"


class DiscoveryError(Exception):
    """The exporter list cannot be read; the message says where from and what to do."""


@dataclass(frozen=True, slots=True)
class Target:
    """One exporter: ``address`` is ``host:port``; ``labels`` are added to all its series."""

    address: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class Discovery(Protocol):
    """Where the exporter list comes from; asked once per scrape round."""

    @property
    def description(self) -> str: ...

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        """The current targets; raises ``DiscoveryError`` when they cannot be known."""
        ...


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):[0-9]{1,5}$")
_SD_FORMAT = 'a JSON list of {"labels": {...}, "targets": ["host:port", ...]} (Prometheus file_sd)'


def _check_address(address: object, where: str) -> str:
    if (
        not isinstance(address, str)
        or not _ADDRESS.match(address)
        or not 0 < int(address.rsplit(":", 1)[1]) < 65536
    ):
        shown = redact_url(address) if isinstance(address, str) else address
        raise DiscoveryError(f"{where}: target {shown!r} is not host:port (port 1-65535)")
    return address


def parse_service_discovery(data: Any, *, source: str) -> tuple[Target, ...]:
    """Prometheus file_sd / http_sd JSON (as Ray writes it) → targets, first occurrence of an address wins.

    Labels starting with ``__`` are dropped, as Prometheus drops them after relabelling."""
    if not isinstance(data, list):
        raise DiscoveryError(f"{source}: expected {_SD_FORMAT}, got {type(data).__name__}")
    seen: dict[str, Target] = {}
    for i, group in enumerate(data):
        where = f"{source}: group {i}"
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            raise DiscoveryError(f"{where}: expected an object with a 'targets' list; format is {_SD_FORMAT}")
        raw_labels = group.get("labels") or {}
        if not isinstance(raw_labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_labels.items()
        ):
            raise DiscoveryError(f"{where}: 'labels' must map strings to strings")
        # An ``instance`` label here would override host:port for a whole group (Prometheus allows that),
        # and merge the per-node series that only host:port tells apart on a fake cluster.
        labels = MappingProxyType(
            {k: v for k, v in raw_labels.items() if not k.startswith("__") and k != "instance" and v}
        )
        for address in group["targets"]:
            checked = _check_address(address, where)
            seen.setdefault(checked, Target(checked, labels))
    return tuple(seen.values())


class StaticDiscovery:
    """A fixed exporter list: ``["10.0.0.1:8080", ...]``, or address → extra labels."""

    def __init__(
        self,
        targets: Iterable[str] | Mapping[str, Mapping[str, str]],
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(labels or {})
        per_target = (
            {a: {**extra, **dict(ls)} for a, ls in targets.items()}
            if isinstance(targets, Mapping)
            else {a: extra for a in targets}
        )
        try:
            group = [{"labels": ls, "targets": [a]} for a, ls in per_target.items()]
            self._targets = parse_service_discovery(group, source="static targets")
        except DiscoveryError as e:
            raise PrometheusConfigError(str(e)) from e

    @property
    def description(self) -> str:
        return f"static targets ({', '.join(t.address for t in self._targets) or 'none'})"

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        return self._targets


class FileDiscovery:
    """Ray's service-discovery file, re-read every round (Ray replaces it atomically every 5 s)."""

    def __init__(self, path: Path | str = DEFAULT_DISCOVERY_FILE) -> None:
        self.path = Path(path)

    @property
    def description(self) -> str:
        return f"Ray's service-discovery file {self.path}"

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError as e:
            raise DiscoveryError(
                f"cannot read Ray's service-discovery file {self.path} ({e.strerror or e}). Ray's dashboard "
                "writes it on the head node every 5 s (not when started with --include-dashboard=false); "
                "run raytide on the head node, give the file under Ray's --temp-dir (or "
                "<temp dir>/session_latest/) if Ray uses another one, use the dashboard's "
                f"{DASHBOARD_SD_PATH} or static exporter targets instead, or set prometheus.url"
            ) from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DiscoveryError(
                f"Ray's service-discovery file {self.path} is not JSON ({e}); expected {_SD_FORMAT}"
            ) from e
        return parse_service_discovery(data, source=str(self.path))


class DashboardDiscovery:
    """The Ray dashboard's ``/api/prometheus/sd`` endpoint (e.g. ``http://127.0.0.1:8265``)."""

    def __init__(self, url: str) -> None:
        try:
            base = httpx.URL(url.strip())
        except httpx.InvalidURL as e:
            raise PrometheusConfigError(
                f"dashboard URL {redact_url(url)!r} is not a valid URL: {e}"
            ) from None
        if base.scheme not in ("http", "https") or not base.host:
            raise PrometheusConfigError(f"dashboard URL {redact_url(url)!r} is not an http(s) URL")
        self.url = base.join(DASHBOARD_SD_PATH)
        self.shown = redact_url(str(self.url))
        """The URL as it appears in any text: without credentials."""

    @property
    def description(self) -> str:
        return f"Ray dashboard service discovery {self.shown}"

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        try:
            response = await client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise DiscoveryError(
                f"cannot reach Ray's dashboard at {self.shown} ({type(e).__name__}: {redact_text(str(e))}); "
                "is the dashboard running (ray[default]) and is the address right?"
            ) from e
        if response.status_code != 200:
            raise DiscoveryError(
                f"Ray's dashboard answered HTTP {response.status_code} at {self.shown}: "
                f"{excerpt(response.text)!r}"
            )
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DiscoveryError(f"{self.shown} did not answer JSON ({e}); expected {_SD_FORMAT}") from e
        except RecursionError:
            raise DiscoveryError(f"{self.shown} answered JSON nested too deeply to read") from None
        return parse_service_discovery(data, source=self.shown)
