"""Durations as people write them (``500ms``, ``30s``, ``15m``, ``1h30m``, ``2d``, or seconds), in seconds.

The one parser behind the configuration (``rate_window``), scenarios and every command-line option that
takes a time span.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
MAX_SECONDS = 366 * 86400.0
"""A year and a day: longer spans are typing mistakes (``1000d``) rather than anything raytide can use."""


class DurationError(ValueError):
    """Not a duration; the message shows the forms that are."""


def parse_duration(value: str | float, *, positive: bool = False) -> float:
    """Seconds from a number of seconds or a string of ``<number><unit>`` parts (units ms, s, m, h, d).

    Negative, non-finite and over-a-year spans are refused; with ``positive``, so is zero.
    """
    seconds = _seconds(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"{value!r} is not a duration (seconds, or like 500ms, 30s, 15m, 1h30m, 2d)")
    if seconds > MAX_SECONDS:
        raise DurationError(f"duration {value!r} is longer than a year")
    if positive and seconds <= 0:
        raise DurationError(f"duration {value!r} must be longer than 0")
    return seconds


def _seconds(value: str | float) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip().replace(" ", "")
    if len(text) > 64:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None
