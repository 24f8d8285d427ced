"""Regular expressions from the configuration: compiled once, and refused when they can backtrack forever.

Python's ``re`` has no timeout, and a stage pattern runs against every operator label of every tick, so a
pattern such as ``(a+)+$`` would stall the loop on one unlucky label. A repeated group that itself repeats
or alternates is the shape behind catastrophic backtracking; such patterns are refused with the reason and
a rewrite hint (``(a+)+`` is ``a+``; ``(a|b)+`` is ``[ab]+``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PATTERN_LENGTH = 1000


@dataclass
class _Frame:
    repeats: bool = False
    alternates: bool = False


def check_regex(pattern: str) -> str:
    """Return ``pattern`` if it compiles and cannot backtrack catastrophically; raise ValueError otherwise."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"regular expression longer than {MAX_PATTERN_LENGTH} characters")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from e
    where = _nested_repetition(pattern)
    if where is not None:
        raise ValueError(
            f"regular expression {pattern!r}: the group ending at offset {where} repeats a part that itself "
            "repeats or alternates, which can take exponential time on a long label; rewrite it without "
            "the nesting (e.g. '(a+)+' as 'a+', '(a|b)+' as '[ab]+')"
        )
    return pattern


def _nested_repetition(p: str) -> int | None:
    """Offset of the first repeated group whose body repeats or alternates, or None."""
    stack = [_Frame()]
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        atom: _Frame | None = None
        if c == "\\":
            i += 2
        elif c == "[":
            i = _class_end(p, i)
        elif c == "(":
            i = _group_body_start(p, i)
            if i > 0 and p[i - 1] == ")":  # a flags-only group such as (?i)
                continue
            stack.append(_Frame())
            continue
        elif c == ")":
            atom = stack.pop() if len(stack) > 1 else _Frame()
            end = i
            i += 1
        elif c == "|":
            stack[-1].alternates = True
            i += 1
            continue
        else:
            i += 1
        repeating, i = _quantifier(p, i)
        if atom is not None and repeating and (atom.repeats or atom.alternates):
            return end
        frame = stack[-1]
        frame.repeats = frame.repeats or repeating or (atom is not None and atom.repeats)
        frame.alternates = frame.alternates or (atom is not None and atom.alternates)
    return None


def _class_end(p: str, i: int) -> int:
    j = i + 1
    if j < len(p) and p[j] == "^":
        j += 1
    if j < len(p) and p[j] == "]":
        j += 1
    while j < len(p) and p[j] != "]":
        j += 2 if p[j] == "\\" else 1
    return j + 1


def _group_body_start(p: str, i: int) -> int:
    """Index just past a group's opening (``(``, ``(?:``, ``(?P<name>``, ``(?<=`` ...)."""
    j = i + 1
    if j >= len(p) or p[j] != "?":
        return j
    j += 1
    if p.startswith("P<", j):
        return p.index(">", j) + 1
    if p.startswith(("<=", "<!"), j):
        return j + 2
    if j < len(p) and p[j] in ":=!#":
        return j + 1
    while j < len(p) and (p[j].isalpha() or p[j] == "-"):
        j += 1
    return j + 1  # past ':' (scoped flags) or ')' (global flags)


_BRACES = re.compile(r"\{(\d*)(,?)(\d*)\}")


def _quantifier(p: str, i: int) -> tuple[bool, int]:
    """Whether a quantifier at ``i`` repeats (more than once), and the index past it."""
    if i >= len(p):
        return False, i
    repeating = False
    if p[i] in "*+":
        repeating, i = True, i + 1
    elif p[i] == "?":
        i += 1
    elif p[i] == "{" and (m := _BRACES.match(p, i)) and (m.group(1) or m.group(3)):
        low, comma, high = m.group(1), m.group(2), m.group(3)
        repeating = bool(comma and not high) or int(high or low or "0") > 1
        i = m.end()
    else:
        return False, i
    if i < len(p) and p[i] in "?+":  # lazy or possessive
        i += 1
    return repeating, i
