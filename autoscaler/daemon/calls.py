"""How the daemon calls out: blocking port calls off the event loop, each within a time limit, and what
went wrong said in one short line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Answered", "NoAnswer", "describe", "off_loop", "within"]

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

_MAX_DESCRIPTION = 300


@dataclass(frozen=True, slots=True)
class Answered(Generic[_T_co]):
    """The call returned ``value`` in time."""

    value: _T_co


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """The call failed or took too long; ``reason`` names what was asked and why there is no answer."""

    reason: str


async def within(aw: Awaitable[_T], limit_s: float, what: str) -> Answered[_T] | NoAnswer:
    """Await ``aw`` for at most ``limit_s``; a timeout or an exception becomes a :class:`NoAnswer`."""
    try:
        return Answered(await asyncio.wait_for(aw, timeout=limit_s))
    except TimeoutError:
        return NoAnswer(f"{what}: no answer within {limit_s:g} s")
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return NoAnswer(f"{what}: {describe(e)}")


async def off_loop(fn: Callable[[], _T], limit_s: float) -> _T:
    """Run the blocking ``fn`` in a worker thread; raises ``TimeoutError`` after ``limit_s``."""
    return await asyncio.wait_for(asyncio.to_thread(fn), timeout=limit_s)


def describe(e: BaseException) -> str:
    """One short line for an error message."""
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e) or type(e).__name__
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 3] + "..."
