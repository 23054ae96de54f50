"""Flow-control options: concurrency, throttle, debounce. Checked when a job is defined."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .durations import is_frequency, parse_duration, parse_frequency, parse_interval


def check_concurrency(value: Any, option: str = "concurrency") -> None:
    if value is None or callable(value):
        return
    if isinstance(value, bool):
        raise ValueError(f"{option}: expected an int, a frequency or a dict, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{option}: must be at least 1, got {value}")
        return
    if isinstance(value, str):
        parse_frequency(value, option)
        return
    if isinstance(value, Mapping):
        unknown = set(value) - {"id", "limit", "mode", "window"}
        if unknown:
            raise ValueError(f"{option}: unknown keys {sorted(unknown)}")
        limit = value.get("limit")
        if limit is None:
            raise ValueError(f"{option}: 'limit' is required")
        if is_frequency(limit):
            parse_frequency(limit, f"{option}.limit")
        elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"{option}.limit: expected an int >= 1 or a frequency, got {limit!r}")
        mode = value.get("mode", "window" if value.get("window") is not None else None)
        if mode not in (None, "window", "rolling"):
            raise ValueError(f"{option}.mode: expected 'window' or 'rolling', got {mode!r}")
        if value.get("window") is not None:
            parse_duration(value["window"], f"{option}.window")
        return
    raise ValueError(f"{option}: expected an int, a frequency, a dict or fn(input), got {value!r}")


def _check_timed(value: Any, option: str, modes: tuple[str, ...], extra: set[str]) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, Mapping):
        unknown = set(value) - {"id", "duration", "mode", *extra}
        if unknown:
            raise ValueError(f"{option}: unknown keys {sorted(unknown)}")
        if "duration" not in value:
            raise ValueError(f"{option}: 'duration' is required")
        parse_interval(value["duration"], f"{option}.duration")
        mode = value.get("mode", modes[0])
        if mode not in modes:
            raise ValueError(f"{option}.mode: expected one of {list(modes)}, got {mode!r}")
        for key in extra:
            if value.get(key) is not None:
                parse_duration(value[key], f"{option}.{key}")
        return
    parse_interval(value, option)


def check_throttle(value: Any) -> None:
    _check_timed(value, "throttle", ("queue", "discard"), set())


def check_debounce(value: Any) -> None:
    _check_timed(value, "debounce", ("trailing", "leading"), {"timeout"})
