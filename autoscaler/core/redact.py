"""Outside text made safe to show: credentials out of URLs, control characters out of terminal text.

Every place a URL becomes text (error messages, logs, the command line, stored and served reasons) goes
through :func:`redact_url` or :func:`redact_text`; every piece of outside text (server bodies, metric labels,
configuration values) shown in a terminal goes through :func:`printable`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "printable", "redact_text", "redact_url"]

MASK = "***"

# A URL's scheme and its userinfo (everything up to the last '@' before the path). The scheme is bounded so
# the search stays linear on long runs of letters.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,31}://)[^/\s?#]*@")

# Terminal escape sequences as a whole (so no "[2J" residue is left behind): CSI, OSC (ended by BEL or ST),
# the other two-byte escapes, and the 8-bit CSI. An unended OSC stops at the line's end.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
)
_CONTROLS: dict[int, str | None] = {c: None for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS[ord("\t")] = " "
_CONTROLS_KEEP_NEWLINES = {**_CONTROLS, ord("\n"): "\n"}
_CONTROLS_ONE_LINE = {**_CONTROLS, ord("\n"): " "}


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) replaced by ``***@``; unchanged when it has none.

    Works on text that is not a valid URL too (``http://u:p@[::1``, ``u:p@host:9090``): nothing that looks
    like credentials before the host is left in.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = len(rest)
    for stop in "/?#":
        at_stop = rest.find(stop)
        if at_stop >= 0:
            end = min(end, at_stop)
    at = rest.rfind("@", 0, end)
    if at < 0:
        return url
    return f"{scheme}{sep}{MASK}@{rest[at + 1 :]}"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the credentials of every URL in it masked, and each of ``secrets`` (a password the
    caller knows) replaced by ``***`` wherever it appears."""
    out = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` without terminal escape sequences and C0/C1 control characters (a tab becomes a space).

    With ``newlines=False`` a line break becomes a space too: for a table cell or one line of a list, where
    a break in a label could pass for a line raytide wrote.
    """
    text = _ESCAPES.sub("", text)
    return text.translate(_CONTROLS_KEEP_NEWLINES if newlines else _CONTROLS_ONE_LINE)
