"""The Grafana dashboard's PromQL, with Grafana's variables replaced the way Grafana would replace them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.deploy.tools import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "raytide.json"

VARIABLES = {
    "$__rate_interval": "20s",
    "$__interval": "10s",
    "$__range": "10m",
    "$job": "raytide",
}
"""What the checks put in for Grafana's variables: the job the deploy files name, and windows that fit a
scrape every 2 s (Grafana makes ``$__rate_interval`` at least four scrape intervals)."""


@dataclass(frozen=True, slots=True)
class Query:
    where: str
    """``panel <title> / <refId>`` or ``annotation <name>``."""
    expr: str
    legend: str

    def promql(self) -> str:
        text = self.expr
        for name in sorted(VARIABLES, key=len, reverse=True):
            text = text.replace(name, VARIABLES[name])
        assert "$" not in text, f"{self.where}: a Grafana variable left in {text!r}"
        return text


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in doc["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def queries(doc: dict[str, Any] | None = None) -> list[Query]:
    doc = doc if doc is not None else load()
    out = [
        Query(f"panel {p['title']!r} / {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in panels(doc)
        for t in p.get("targets", [])
    ]
    out.extend(
        Query(f"annotation {a['name']!r}", a["expr"], a.get("titleFormat", ""))
        for a in doc["annotations"]["list"]
        if "expr" in a
    )
    return out
