from datetime import timedelta

import pytest

from dq import create_job, parse_duration, parse_frequency
from dq.engine.durations import Frequency


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250), ("3s", 3000), ("5m", 300_000), ("1h", 3_600_000), ("1 day", 86_400_000),
        ("2 days", 172_800_000), ("1 week", 604_800_000), ("1h30m", 5_400_000), (" 2 hours ", 7_200_000),
        (1500, 1500), (2.5, 2), (timedelta(seconds=2), 2000),
    ],
)  # fmt: skip
def test_durations(text: object, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["", "5 parsecs", "1h and 5m", "abc", "-3s", -1, True, None, [1]])
def test_bad_durations_name_the_option_and_the_text(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad, "timeout")
    assert "timeout" in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("text", "freq"),
    [("3/s", Frequency(3, 1000)), ("10/m", Frequency(10, 60_000)), ("1 per second", Frequency(1, 1000)),
     ("2 per 5 minutes", Frequency(2, 300_000))],
)  # fmt: skip
def test_frequencies(text: str, freq: Frequency) -> None:
    assert parse_frequency(text) == freq


@pytest.mark.parametrize("bad", ["3/", "per second", "0/s", "1.5/s", "3/parsec"])
def test_bad_frequencies(bad: str) -> None:
    with pytest.raises(ValueError, match="throttle"):
        parse_frequency(bad, "throttle")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"timeout": "5 parsecs"}, "timeout"),
        ({"backoff": "soon"}, "backoff"),
        ({"backoff": {"initial": "1x"}}, "backoff.initial"),
        ({"backoff": {"speed": 1}}, "unknown keys"),
        ({"backoff": []}, "backoff"),
        ({"retry": -1}, "retry"),
        ({"retry": "3"}, "retry"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "3 per fortnight"}, "concurrency"),
        ({"concurrency": {"limit": 2, "mode": "sliding"}}, "concurrency.mode"),
        ({"concurrency": {"id": lambda data: data["user"], "limit": 1}}, "concurrency.id: expected a string, got a function"),
        ({"concurrency": {"id": 7, "limit": 1}}, "concurrency.id"),
        ({"throttle": {"id": lambda data: data, "duration": "1s"}}, "throttle.id"),
        ({"debounce": {"id": lambda data: data, "duration": "1s"}}, "debounce.id"),
        ({"throttle": "fast"}, "throttle"),
        ({"throttle": {"duration": "1s", "mode": "drop"}}, "throttle.mode"),
        ({"debounce": {"duration": "1s", "timeout": "never"}}, "debounce.timeout"),
        ({"cron": "every minute"}, "cron"),
        ({"priority": "high"}, "priority"),
        ({"on_success": "print"}, "on_success"),
    ],
)
def test_malformed_options_fail_at_definition_time(options: dict[str, object], needle: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        create_job(lambda data: None, name="j", **options)
    assert needle in str(info.value)


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match="retries"):
        create_job(lambda data: None, name="j", retries=3)
