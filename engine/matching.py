"""What a `wait_for` match means: a dict matches by keys (recursively), a callable is
a predicate over the typed value; and how a match is stored with its wait step."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def matches(match: Any, value: Any, typed: Any) -> bool:
    """A dict matches when each of its keys is present with an equal value (recursively);
    a callable is a predicate over the typed value."""
    if callable(match):
        return bool(match(typed))
    if isinstance(match, Mapping):
        return isinstance(value, Mapping) and all(
            k in value and matches(v, value[k], value[k]) for k, v in match.items()
        )
    return bool(match == value)


def describe_match(match: Any) -> Any:
    """The match as stored with a wait step, for the dashboard's "why is it waiting":
    a dict as JSON, a predicate by its name."""
    if match is None or callable(match):
        return None if match is None else f"<{getattr(match, '__qualname__', 'predicate')}>"
    try:
        return json.loads(json.dumps(match))
    except (TypeError, ValueError):
        return repr(match)
