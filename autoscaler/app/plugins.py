"""Policy plugins: find them by installed entry-point name or ``module:attr`` and instantiate them."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from autoscaler.core.policy_api import ENTRY_POINT_GROUP, Policy


class PolicyLoadError(Exception):
    """A policy reference that cannot be used; the message says what to fix."""


def installed_policies() -> dict[str, str]:
    """Policy name → the object its entry point names, for every installed policy plugin."""
    return {ep.name: ep.value for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


def _import_ref(ref: str) -> object:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise PolicyLoadError(
            f"policy reference {ref!r} is neither an installed policy ({', '.join(installed_policies())}) "
            "nor of the form 'package.module:attribute'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PolicyLoadError(
            f"policy {ref!r}: cannot import module {module_name!r} ({e}). Is the package installed in this "
            "environment (pip install it), or is the module path misspelt?"
        ) from e
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PolicyLoadError(f"policy {ref!r}: module {module_name!r} has no attribute {attr!r}") from e
    return obj


def load_policy(ref: str, options: Mapping[str, Any] | None = None) -> Policy:
    """Instantiate a policy by installed name or ``module:attr``, passing ``options`` as keyword arguments."""
    installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if ref in installed:
        try:
            factory: object = installed[ref].load()
        except Exception as e:
            raise PolicyLoadError(
                f"installed policy {ref!r} ({installed[ref].value}) failed to import: {e}"
            ) from e
    else:
        factory = _import_ref(ref)
    opts = dict(options or {})
    try:
        json.dumps(opts)
    except TypeError as e:
        raise PolicyLoadError(f"policy {ref!r}: options must be plain YAML/JSON values ({e})") from e
    if isinstance(factory, type) or (callable(factory) and not hasattr(factory, "decide")):
        try:
            policy = factory(**opts)
        except (TypeError, ValueError) as e:
            raise PolicyLoadError(f"policy {ref!r}: bad options {sorted(opts)}: {e}") from e
    else:
        if opts:
            raise PolicyLoadError(f"policy {ref!r} is an instance and takes no options")
        policy = factory
    if not isinstance(policy, Policy):
        raise PolicyLoadError(
            f"policy {ref!r} resolved to {type(policy).__name__}, which has no 'name' attribute and "
            "'decide(ctx) -> PolicyDecision' method"
        )
    return policy
