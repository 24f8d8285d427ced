"""Policy plugins: find them by installed entry-point name or ``module:attr`` and instantiate them, or check a
reference without importing a plugin (what ``check-config`` does with a file it must not run)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from autoscaler.core.policy_api import ENTRY_POINT_GROUP, Policy


class PolicyLoadError(Exception):
    """A policy reference that cannot be used; the message says what to fix."""


_OWN_DISTRIBUTION = "raytide"
"""The distribution whose policies are raytide's own code: importing them runs nothing a file brought in."""


def installed_policies() -> dict[str, str]:
    """Policy name → the object its entry point names, for every installed policy plugin."""
    return {ep.name: ep.value for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


def _split_ref(ref: str) -> tuple[str, str]:
    module_name, _, attr = ref.partition(":")
    if not all(p.isidentifier() for p in module_name.split(".")) or not all(
        p.isidentifier() for p in attr.split(".")
    ):
        raise PolicyLoadError(
            f"policy reference {ref!r} is neither an installed policy ({', '.join(installed_policies())}) "
            "nor of the form 'package.module:attribute'"
        )
    return module_name, attr


def _is_builtin(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == _OWN_DISTRIBUTION


def check_policy(
    ref: str, options: Mapping[str, Any] | None = None, *, load_plugins: bool = False
) -> str | None:
    """Check a policy reference as far as can be done without running a plugin's code.

    raytide's own policies are loaded with ``options`` (that checks the options too); a plugin (another
    package's installed policy, or a ``module:attr`` reference) is only imported with ``load_plugins``.
    Returns None when the reference was fully checked, else a note saying what was not; raises
    ``PolicyLoadError`` for a reference that cannot work.
    """
    if load_plugins:
        load_policy(ref, options)
        return None
    installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    ep = installed.get(ref)
    if ep is not None:
        if _is_builtin(ep):
            load_policy(ref, options)
            return None
        source = f"{ep.dist.name} " if ep.dist is not None else ""
        return (
            f"policy {ref!r} is installed ({source}{ep.value}); its options are not checked: pass "
            "--load-plugins to import it"
        )
    _split_ref(ref)
    return f"policy {ref!r}: not checked: pass --load-plugins to import it"


def _import_ref(ref: str) -> object:
    module_name, attr = _split_ref(ref)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PolicyLoadError(
            f"policy {ref!r}: cannot import module {module_name!r} ({e}). Is the package installed in this "
            "environment (pip install it), or is the module path misspelt?"
        ) from e
    except Exception as e:  # the module's own code failed as it ran: any type
        raise PolicyLoadError(f"policy {ref!r}: module {module_name!r} failed to import: {e!r}") from e
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
    except (TypeError, ValueError, RecursionError) as e:
        raise PolicyLoadError(f"policy {ref!r}: options must be plain YAML/JSON values ({e})") from e
    if isinstance(factory, type) or (callable(factory) and not hasattr(factory, "decide")):
        try:
            policy = factory(**opts)
        except (TypeError, ValueError) as e:
            raise PolicyLoadError(f"policy {ref!r}: bad options {sorted(opts)}: {e}") from e
        except Exception as e:  # the plugin's own code failed as it ran: any type
            raise PolicyLoadError(f"policy {ref!r} failed to start with options {sorted(opts)}: {e!r}") from e
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
