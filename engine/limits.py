"""Flow-control options: concurrency, throttle, debounce. Checked when a job is defined."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
        _check_id(value.get("id"), option)
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


def _check_id(value: Any, option: str) -> None:
    """A dict's `id` names one group; a function there would silently make every key
    share one limit (the dict is not called per input): per-key limits are the
    function form of the whole option."""
    if value is None or isinstance(value, str):
        return
    if callable(value):
        raise TypeError(
            f"{option}.id: expected a string, got a function; for a limit per key, pass a "
            f'function of the input for the whole option: {option}=lambda data: {{"id": data.user, ...}}'
        )
    raise TypeError(f"{option}.id: expected a string, got {value!r}")


def _check_timed(value: Any, option: str, modes: tuple[str, ...], extra: set[str]) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, Mapping):
        unknown = set(value) - {"id", "duration", "mode", *extra}
        if unknown:
            raise ValueError(f"{option}: unknown keys {sorted(unknown)}")
        _check_id(value.get("id"), option)
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
    _check_timed(value, "throttle", ("discard", "queue"), set())


def check_debounce(value: Any) -> None:
    _check_timed(value, "debounce", ("trailing", "leading"), {"timeout"})


# -- runtime: enforcing the limits across every process that shares the storage ------------
#
# Every decision is a compare-and-set on a state key (`Batch.expect`), so two processes
# can never both take the last slot, both pass a throttle window, or both start a tick.


@dataclass(frozen=True)
class Limit:
    """A resolved concurrency limit: `limit` at once, or starts per `window_ms`."""

    key: str
    limit: int
    window_ms: int | None = None  # None: concurrent slots; else starts per window
    rolling: bool = True

    def describe(self) -> str:
        if self.window_ms is None:
            return f"concurrency {self.limit} for {self.key}"
        kind = "rolling" if self.rolling else "fixed"
        return f"{self.limit} starts per {self.window_ms} ms ({kind}) for {self.key}"


def _resolve(value: Any, input: Any, option: str) -> Any:
    if callable(value):
        value = value(input)
        if value is not None:
            _validators[option](value)
    return value


def resolve_concurrency(job_name: str, value: Any, input: Any) -> Limit | None:
    value = _resolve(value, input, "concurrency")
    if value is None:
        return None
    if isinstance(value, int):
        return Limit(job_name, value)
    if isinstance(value, str):
        freq = parse_frequency(value, "concurrency")
        return Limit(job_name, freq.count, freq.per_ms, rolling=True)
    key = f"{job_name}:{value['id']}" if value.get("id") is not None else job_name
    limit = value["limit"]
    mode = value.get("mode")
    if is_frequency(limit):
        freq = parse_frequency(limit, "concurrency.limit")
        return Limit(key, freq.count, freq.per_ms, rolling=mode != "window")
    if value.get("window") is not None:
        return Limit(key, int(limit), parse_duration(value["window"], "concurrency.window"), rolling=mode == "rolling")
    return Limit(key, int(limit))


@dataclass(frozen=True)
class Timed:
    """A resolved throttle or debounce."""

    key: str
    interval_ms: int
    mode: str
    timeout_ms: int | None = None


def resolve_timed(job_name: str, value: Any, input: Any, option: str) -> Timed | None:
    value = _resolve(value, input, option)
    if value is None:
        return None
    default_mode = "discard" if option == "throttle" else "trailing"
    if isinstance(value, Mapping):
        key = f"{job_name}:{value['id']}" if value.get("id") is not None else job_name
        timeout = value.get("timeout")
        return Timed(
            key, parse_interval(value["duration"], f"{option}.duration"), value.get("mode", default_mode),
            parse_duration(timeout, f"{option}.timeout") if timeout is not None else None,
        )  # fmt: skip
    return Timed(job_name, parse_interval(value, option), default_mode)


_validators: dict[str, Callable[[Any], None]] = {
    "concurrency": check_concurrency,
    "throttle": check_throttle,
    "debounce": check_debounce,
}


def window_reserve(limit: Limit, state: Any, now: int, holder: str) -> tuple[int, Any]:
    """For a rate limit: the time `holder` may start (now, or the moment the window
    allows) and the new state, which records that start.

    The state is `{"starts": [[t, holder], ...]}` in time order, future starts
    included: each waiter reserves its own start, so waiters wake one by one at
    their turn instead of all at once at the window's end. A holder that already
    has a start keeps it (a replay after a crash does not take a second one).
    Starts are handed out in arrival order: a later arrival never starts first.
    """
    assert limit.window_ms is not None
    window, most = limit.window_ms, limit.limit
    starts = [s for s in (state or {}).get("starts", []) if isinstance(s, list) and len(s) == 2]
    for at, who in starts:
        if who == holder:
            return int(at), state
    if limit.rolling:
        # Any `window` of time holds at most `most` starts; older ones no longer count.
        kept = [s for s in starts if s[0] > now - window]
        at = now if not kept else max(now, kept[-1][0])
        if len(kept) >= most:
            at = max(at, kept[-most][0] + window)
    else:
        current = now - now % window
        kept = [s for s in starts if s[0] >= current]
        if not kept:
            at = now
        else:
            last = kept[-1][0] - kept[-1][0] % window
            used = sum(1 for s in kept if s[0] - s[0] % window == last)
            at = max(now, last) if used < most else last + window
    return at, {"starts": [*kept, [at, holder]]}
