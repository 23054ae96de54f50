"""Cron schedules: the expression forms of the `cron` job option, checked when defined.

Five fields are minute, hour, day of month, month, day of week. Six fields put
the seconds field first, as node-cron and Quartz do (croniter, underneath,
would read the sixth field as seconds; `second_at_beginning` tells it not to).
A schedule has an IANA time zone (default UTC): `"0 9 * * *"` in
`Europe/Paris` fires at 09:00 Paris time, winter and summer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_FORMS = "5 fields ('*/5 * * * *'), 6 with seconds first ('*/10 * * * * *'), or {'expr': ..., 'tz': 'Europe/Paris'}"


@dataclass(frozen=True)
class CronSchedule:
    expr: str
    tz_name: str
    tz: tzinfo

    @property
    def seconds_first(self) -> bool:
        return len(self.expr.split()) == 6

    def _iter(self, at_ms: int) -> croniter:
        start = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(self.tz)
        return croniter(self.expr, start, second_at_beginning=self.seconds_first)

    def prev(self, at_ms: int) -> int:
        """The latest tick at or before `at_ms` (ms since the epoch)."""
        return _ms(self._iter(at_ms).get_prev(datetime))

    def next(self, at_ms: int) -> int:
        """The first tick after `at_ms`."""
        return _ms(self._iter(at_ms).get_next(datetime))

    def describe(self) -> str:
        return self.expr if self.tz_name == "UTC" else f"{self.expr} ({self.tz_name})"


def parse_cron(value: Any, option: str = "cron") -> CronSchedule:
    """Every form of the `cron` option; a malformed expression or an unknown time zone
    raises ValueError naming it."""
    tz_name: Any = "UTC"
    expr = value
    if isinstance(value, Mapping):
        unknown = set(value) - {"expr", "tz"}
        if unknown:
            raise ValueError(f"{option}: unknown keys {sorted(unknown)}; expected {_FORMS}")
        if "expr" not in value:
            raise ValueError(f"{option}: 'expr' is required; expected {_FORMS}")
        expr, tz_name = value["expr"], value.get("tz") or "UTC"
    if not isinstance(expr, str):
        raise ValueError(f"{option}: expected {_FORMS}, got {value!r}")
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"{option}: {expr!r} has {len(fields)} fields; expected {_FORMS}")
    if not croniter.is_valid(expr, second_at_beginning=len(fields) == 6):
        raise ValueError(f"{option}: {expr!r} is not a valid cron expression; expected {_FORMS}")
    if not isinstance(tz_name, str):
        raise ValueError(f"{option}.tz: expected an IANA time zone name, got {tz_name!r}")
    try:
        tz: tzinfo = UTC if tz_name == "UTC" else ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{option}.tz: unknown time zone {tz_name!r} (an IANA name like 'Europe/Paris')") from None
    return CronSchedule(" ".join(fields), tz_name, tz)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)
