"""Retry counts and backoff policies, normalised at definition time."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .durations import parse_duration

DEFAULT_RETRY = 3


@dataclass(frozen=True)
class Exponential:
    initial_ms: int = 1000
    max_ms: int | None = None
    factor: float = 2.0
    jitter: float = 1.0  # fraction of the delay added at random: 1.0 makes the first wait 1-2 s

    def delay(self, retry: int) -> int:
        base = self.initial_ms * self.factor ** max(0, retry - 1)
        if self.max_ms is not None:
            base = min(base, self.max_ms)
        return int(base * (1 + random.random() * self.jitter))


Backoff = Callable[[int, Any], int]
"""(retry number starting at 1, input) -> delay in ms."""

_DEFAULT = Exponential()


def _default_backoff(retry: int, _input: Any) -> int:
    return _DEFAULT.delay(retry)


def make_backoff(value: Any, option: str = "backoff") -> Backoff:
    """Every backoff form of docs/errors-and-retries.md, checked now, not at the first failure."""
    if value is None:
        return _default_backoff
    if isinstance(value, Mapping):
        unknown = set(value) - {"initial", "max", "factor", "jitter", "attempts"}
        if unknown:
            raise ValueError(f"{option}: unknown keys {sorted(unknown)}")
        policy = Exponential(
            initial_ms=parse_duration(value.get("initial", 1000), f"{option}.initial"),
            max_ms=parse_duration(value["max"], f"{option}.max") if value.get("max") is not None else None,
            factor=float(value.get("factor", 2)),
            jitter=float(value.get("jitter", 0)),
        )
        if policy.factor <= 0 or policy.jitter < 0:
            raise ValueError(f"{option}: factor must be > 0 and jitter >= 0, got {dict(value)!r}")
        return lambda retry, _input: policy.delay(retry)
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{option}: an empty list of delays")
        delays = [parse_duration(v, f"{option}[{i}]") for i, v in enumerate(value)]
        return lambda retry, _input: delays[min(retry, len(delays)) - 1]
    if callable(value):
        fn = value

        def call(retry: int, input: Any) -> int:
            try:
                result = fn(retry, input)
            except TypeError:
                result = fn(retry)
            return parse_duration(result, option)

        return call
    fixed = parse_duration(value, option)
    return lambda retry, _input: fixed


def _three(_input: Any) -> int:
    return DEFAULT_RETRY


def backoff_attempts(value: Any, option: str = "backoff") -> int | None:
    """The `attempts` of a backoff dict: the most retries that backoff allows."""
    if not isinstance(value, Mapping) or value.get("attempts") is None:
        return None
    attempts = value["attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"{option}.attempts: expected an int >= 0 (the most retries), got {attempts!r}")
    return attempts


def make_retry(value: Any, option: str = "retry", attempts: int | None = None) -> Callable[[Any], int]:
    """Retries after the first attempt. A backoff's `attempts` caps them: alone it
    is the count, with `retry` also set the smaller of the two wins."""
    if attempts is not None:
        if value is None:
            return lambda _input: attempts
        inner = make_retry(value, option)
        return lambda input: min(inner(input), attempts)
    if value is None or (value == DEFAULT_RETRY and type(value) is int):
        return _three
    if isinstance(value, bool) or not (isinstance(value, int) or callable(value)):
        raise ValueError(f"{option}: expected an int or fn(input) -> int, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{option}: cannot be negative, got {value}")
        count = value
        return lambda _input: count
    fn = value
    return lambda input: max(0, int(fn(input)))
