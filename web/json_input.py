"""JSON typed by people (the start form): bounded in size, depth and number length.

`json.loads` alone answers a deeply nested text with RecursionError and a
5,000-digit number with a bare ValueError; both used to end as a 500. Here
every limit is checked first and reported as a `JsonInputError` whose message
says what is wrong, for a 422 next to the form.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 100

# A string runs to its closing quote or, unterminated, to the end: one linear pass, no retries.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class JsonInputError(ValueError):
    """JSON text that is malformed or over a limit; the message says which."""


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON text, strings skipped (no parsing, no recursion)."""
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def _number(text: str) -> Any:
    if len(text) > MAX_NUMBER_DIGITS:
        raise JsonInputError(f"a number has {len(text)} characters; at most {MAX_NUMBER_DIGITS} are accepted")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise JsonInputError(f"a number has {len(text)} characters; at most {MAX_NUMBER_DIGITS} are accepted")
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"the number {text} is too large for JSON (it would be Infinity)")
    return value


def _constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON value")


def loads(text: str) -> Any:
    """Parse JSON typed into a form. Raises JsonInputError."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise JsonInputError(f"the JSON text is {size} bytes; at most {MAX_BYTES} are accepted")
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise JsonInputError(f"the JSON is nested {depth} levels deep; at most {MAX_DEPTH} are accepted")
    try:
        return json.loads(text, parse_int=_number, parse_float=_float, parse_constant=_constant)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise JsonInputError(f"Not valid JSON: {exc}") from None
