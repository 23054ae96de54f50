"""Duration and Frequency parsing. Everything internal is integer milliseconds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

Duration = int | float | timedelta | str

_UNITS_MS = {
    "ms": 1, "millisecond": 1, "milliseconds": 1,
    "s": 1000, "sec": 1000, "secs": 1000, "second": 1000, "seconds": 1000,
    "m": 60_000, "min": 60_000, "mins": 60_000, "minute": 60_000, "minutes": 60_000,
    "h": 3_600_000, "hr": 3_600_000, "hrs": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
    "w": 604_800_000, "week": 604_800_000, "weeks": 604_800_000,
}  # fmt: skip
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_FREQ = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$"
)


def parse_duration(value: object, option: str = "duration") -> int:
    """Milliseconds from a Duration; `ValueError` naming `option` and the bad value."""
    if isinstance(value, bool):
        raise ValueError(f"{option}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{option}: a duration cannot be negative, got {value!r}")
        return int(value)
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"{option}: a duration cannot be negative, got {value!r}")
        return int(value.total_seconds() * 1000)
    if isinstance(value, str):
        text = value.strip().lower()
        pos, total, matched = 0, 0.0, False
        while pos < len(text):
            m = _PART.match(text, pos)
            if not m or m.group(2) not in _UNITS_MS:
                break
            total += float(m.group(1)) * _UNITS_MS[m.group(2)]
            pos, matched = m.end(), True
        if matched and pos == len(text):
            return int(total)
        raise ValueError(
            f"{option}: cannot parse duration {value!r} "
            "(examples: 250ms, 3s, 5m, 1h, '1 day', '2 weeks', 1h30m)"
        )
    raise ValueError(f"{option}: expected a duration (ms, timedelta or string), got {value!r}")


@dataclass(frozen=True)
class Frequency:
    """`count` events per `per_ms` milliseconds."""

    count: int
    per_ms: int

    @property
    def interval_ms(self) -> int:
        return max(1, self.per_ms // max(1, self.count))


def parse_frequency(value: object, option: str = "frequency") -> Frequency:
    """`"3/s"`, `"10/m"`, `"1 per second"`, `"2 per 5 minutes"`."""
    if isinstance(value, Frequency):
        return value
    if isinstance(value, str):
        m = _FREQ.match(value.strip().lower())
        if m and m.group(3) in _UNITS_MS:
            count = float(m.group(1))
            every = float(m.group(2) or 1)
            if count > 0 and every > 0 and count == int(count):
                return Frequency(int(count), int(every * _UNITS_MS[m.group(3)]))
    raise ValueError(
        f"{option}: cannot parse frequency {value!r} "
        "(examples: '3/s', '10/m', '1 per second', '2 per 5 minutes')"
    )


def is_frequency(value: object) -> bool:
    return isinstance(value, Frequency) or (
        isinstance(value, str) and ("/" in value or " per " in value.lower())
    )


def parse_interval(value: object, option: str) -> int:
    """A Duration, or a Frequency read as the interval between two events."""
    if is_frequency(value):
        return parse_frequency(value, option).interval_ms
    return parse_duration(value, option)
