"""Text that cannot be encoded: lone UTF-16 surrogates inside JSON values.

A Python `str` may hold code points U+D800..U+DFFF (a truncated emoji from a
JavaScript client, `os.fsdecode` of bad bytes). JSON escapes them, so storage
keeps them, but nothing can encode them as UTF-8: a page, a download or a
stream carrying one fails. dq refuses such text where values enter (inputs,
outputs, pipe messages, step results) and makes text it cannot refuse (error
messages and tracebacks) encodable before storing it.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (holds no surrogate code point)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")  # in C: several times faster than searching for surrogates
    except UnicodeEncodeError:
        return False
    return True


def scrub(text: str) -> str:
    """`text` with surrogate pairs joined into their character and lone surrogates as U+FFFD."""
    if encodable(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def escape(text: str) -> str:
    """`text` with each surrogate written as its `\\udXXX` escape: inside JSON text this
    is the same value, and it always encodes."""
    if encodable(text):
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def find_unencodable(value: Any) -> tuple[str, str] | None:
    """The first string or key in a JSON value that does not encode as UTF-8: its path
    (`['user']['name']`, `[3]`, "" for the value itself) and its text; None when all do."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not encodable(item):
                return where, item
        elif isinstance(item, dict):
            for key, sub in reversed(list(item.items())):
                here = f"{where}[{key!r}]"
                if isinstance(key, str) and not encodable(key):
                    return here, key
                stack.append((sub, here))
        elif isinstance(item, list | tuple):
            stack.extend((sub, f"{where}[{i}]") for i, sub in reversed(list(enumerate(item))))
    return None


def first_unencodable(text: str) -> str:
    """The first surrogate of `text`, as its escape (`\\ud800`), for error messages."""
    found = _SURROGATE.search(text)
    return escape(found.group()) if found else ""
