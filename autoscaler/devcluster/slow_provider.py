"""A fake multi-node provider whose nodes take ``launch_delay_s`` (a provider config key) to "boot", so a
local cluster shows the launch latency real clouds have. Ray's autoscaler loads it as an external provider
from a copy named :data:`STANDALONE_MODULE` (docs/architecture.md, "The local cluster"): keep this module
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
    """``FakeMultiNodeProvider`` plus a configurable boot delay per launch request, loaded by the cluster
    config's ``provider: {type: external, module: <MODULE_PATH>, launch_delay_s: <seconds>}``."""

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
        # Outside the provider's lock (the parent takes it), so the autoscaler can still list nodes meanwhile.
        if self._launch_delay_s > 0:
            time.sleep(self._launch_delay_s)
        super().create_node_with_resources_and_labels(  # type: ignore[no-untyped-call]
            node_config, tags, count, resources, labels
        )
