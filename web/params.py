"""The one parser for request parameters: every route reads its query values through it.

Numbers are ASCII digits only (`str.isdigit()` also accepts `²` and `٣`, which
`int()` then refuses) and range-checked before they reach storage (SQLite's
integers stop at 2**63 - 1). Ids and free text are bounded and hold no control
characters. A value that fails is a `BadParam`, answered 400 with one line
naming the parameter — never a 500.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qs

from litestar.exceptions import ClientException
from litestar.types import Scope

#: The largest integer every adapter stores (BIGINT, SQLite INTEGER, Lua numbers below 2**53 are exact).
MAX_INT = 2**53 - 1
#: Epoch ms of 9999-12-31T23:59:59.999Z, the last instant `datetime` can show.
MAX_TIME_MS = 253_402_300_799_999
MAX_TEXT = 200
MAX_FIELDS = 1000

_DIGITS = re.compile(r"[0-9]{1,20}")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class BadParam(ClientException, ValueError):
    """A request parameter that cannot be used (400); the detail names it."""

    def __init__(self, name: str, value: str, why: str) -> None:
        shown = value if len(value) <= 40 else value[:40] + "…"
        super().__init__(detail=f"{name}: {shown!r} {why}")
        self.name = name


def integer(value: str, name: str, *, low: int = 0, high: int = MAX_INT) -> int:
    """A whole number in [low, high], written in ASCII digits."""
    text = value.strip()
    if _DIGITS.fullmatch(text) is None:
        raise BadParam(name, value, f"is not a whole number (digits 0-9, {low} to {high})")
    number = int(text)
    if not low <= number <= high:
        raise BadParam(name, value, f"is out of range ({low} to {high})")
    return number


def timestamp(value: str, name: str) -> int:
    """An ISO date/time (UTC when it has no zone) or epoch ms -> epoch ms."""
    text = value.strip()
    if _DIGITS.fullmatch(text):
        return integer(text, name, high=MAX_TIME_MS)
    try:
        if not text.isascii():
            raise ValueError(text)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = int(dt.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        raise BadParam(name, value, "is not a date/time (ISO 8601 or epoch ms)") from None
    if not 0 <= ms <= MAX_TIME_MS:
        raise BadParam(name, value, "is out of range (1970 to 9999)")
    return ms


def ident(value: str, name: str) -> str:
    """An execution id (or an id used as a cursor)."""
    if _ID.fullmatch(value) is None:
        raise BadParam(name, value, "is not an execution id (letters, digits, - _ . :)")
    return value


def is_ident(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def text(value: str, name: str, *, max_len: int = MAX_TEXT) -> str:
    """Free text: bounded, without control characters."""
    if len(value) > max_len:
        raise BadParam(name, value, f"is longer than {max_len} characters")
    if _CONTROL.search(value):
        raise BadParam(name, value, "holds control characters")
    return value


def choice(value: str, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise BadParam(name, value, "is not one of " + ", ".join(allowed))
    return value


def last(params: Mapping[str, Sequence[str]], key: str) -> str:
    """The last value of a repeated parameter, stripped ("" when absent)."""
    values = params.get(key) or []
    return values[-1].strip() if values else ""


def query_lists(scope: Scope) -> dict[str, list[str]]:
    """The query string as multi-valued parameters. Raw bytes that are not ASCII
    (a client that skipped percent-encoding) are read as Latin-1, never refused with a 500."""
    raw = scope.get("query_string", b"").decode("latin-1")
    try:
        return parse_qs(raw, keep_blank_values=False, max_num_fields=MAX_FIELDS, errors="replace")
    except ValueError:
        raise BadParam("query", raw, f"has more than {MAX_FIELDS} parameters") from None


def header(scope: Scope, name: bytes) -> str:
    """A request header's value (the last one), Latin-1 as HTTP defines it; "" when absent."""
    found = ""
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            found = value.decode("latin-1")
    return found
