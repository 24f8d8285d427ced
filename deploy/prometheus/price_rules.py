"""Prometheus recording rules carrying raytide's prices and budget, for the dashboard's cost panels.

raytide's own metrics count nodes per shape but do not say what a shape costs, so the Grafana dashboard
multiplies the node counts by these constant series, written from the same configuration raytide runs
with::

    python deploy/prometheus/price_rules.py /etc/raytide/raytide.yaml > raytide-prices.yaml

Load the output next to raytide-rules.yaml (``rule_files:``) and write it again when prices change. Series:
``raytide:shape_price_per_hour{shape}``, and ``raytide:budget_per_hour`` and
``raytide:warm_pool_budget_per_hour`` when those budgets are finite.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from autoscaler.app.config_file import load_config
from autoscaler.core.config import Config


def price_rules(cfg: Config) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {
            "record": "raytide:shape_price_per_hour",
            "expr": f"vector({s.price_per_hour!r})",
            "labels": {"shape": s.name},
        }
        for s in cfg.shapes
    ]
    for name, value in (
        ("raytide:budget_per_hour", cfg.bounds.budget_per_hour),
        ("raytide:warm_pool_budget_per_hour", cfg.warm_pool.budget_per_hour),
    ):
        if math.isfinite(value):
            rules.append({"record": name, "expr": f"vector({value!r})"})
    return {"groups": [{"name": "raytide-prices", "rules": rules}]}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    # JSON is YAML: no YAML writer needed, and every value is quoted exactly.
    json.dump(price_rules(load_config(argv[0])), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
