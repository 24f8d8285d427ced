"""A fake multi-node provider whose nodes take a while to "boot".

Ray's fake multi-node provider starts a worker raylet as soon as the autoscaler asks for it, so a local
cluster never shows the launch latency real clouds have — the latency the warm pool exists to hide. This
subclass sleeps ``launch_delay_s`` (provider config key) before creating each batch, outside the
provider's lock so the autoscaler can still list nodes meanwhile. The autoscaler loads it as an external
provider::

    provider:
      type: external
      module: raytide_fake_provider.DelayedFakeMultiNodeProvider
      launch_delay_s: 5

It runs inside Ray's autoscaler process, where ``autoscaler`` is not raytide: Ray starts its monitor as
a script, so the monitor's directory (which holds Ray's own ``autoscaler.py``) comes first on
``sys.path`` and ``import autoscaler.devcluster.slow_provider`` fails with "'autoscaler' is not a package".
:mod:`autoscaler.devcluster.cluster` therefore copies this file under the unique name
:data:`STANDALONE_MODULE` into a directory it puts on the head's ``PYTHONPATH``. Keep this module
self-contained (Ray and the standard library only) so that the copy works.
"""

from __future__ import annotations

import time
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

STANDALONE_MODULE = "raytide_fake_provider"
"""The module name the copy of this file has inside Ray's autoscaler process."""
MODULE_PATH = f"{STANDALONE_MODULE}.DelayedFakeMultiNodeProvider"
"""What to put in ``provider.module`` of a cluster config."""


class DelayedFakeMultiNodeProvider(FakeMultiNodeProvider):
    """``FakeMultiNodeProvider`` plus a configurable boot delay per launch request."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self._launch_delay_s = float(provider_config.get("launch_delay_s", 0.0))

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> None:
        if self._launch_delay_s > 0:
            time.sleep(self._launch_delay_s)
        super().create_node_with_resources_and_labels(  # type: ignore[no-untyped-call]
            node_config, tags, count, resources, labels
        )
