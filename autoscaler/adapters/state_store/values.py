"""Values going into the state file, checked before a transaction starts (nothing is dropped to make a write
succeed), and the JSON read back out of it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "check_key",
    "dump",
    "finite",
    "json_object",
    "json_strings",
    "limit",
    "optional_str",
    "stored_float",
    "stored_int",
    "stored_optional_str",
    "stored_str",
    "stored_tick",
    "strings",
]


def dump(value: Any, what: str) -> str:
    """Compact JSON; ValueError when ``value`` cannot be stored as JSON (NaN included)."""
    try:
        return json.dumps(
            dict(value) if isinstance(value, Mapping) else value, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: cannot be stored as JSON: {e}") from e


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def json_strings(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    return strings(value, "reasons")


def strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{what}: expected a list of strings, got {type(value).__name__}")
    for i, s in enumerate(value):
        if not isinstance(s, str):
            raise ValueError(f"{what}[{i}]: expected a string, got {s!r}")
    return list(value)


def finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    return float(v)


def limit(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"limit must be an int >= 0, got {n!r}")
    return n


def check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"action key must be a non-empty string, got {key!r}")


def optional_str(v: Any, what: str) -> None:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{what} must be a string or None, got {v!r}")


# Read back: a column holds whatever was written to it (SQLite's types are affinities, not checks), so a
# value is checked before it is used; a ValueError here becomes a StateStoreError naming the file.


def stored_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {_show(v)}")
    return v


def stored_tick(v: Any) -> int:
    if stored_int(v) < 0:
        raise ValueError(f"expected a tick >= 0, got {v!r}")
    return int(v)


def stored_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {_show(v)}")
    return float(v)


def stored_str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected text, got {_show(v)}")
    return v


def stored_optional_str(v: Any) -> str | None:
    return None if v is None else stored_str(v)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
