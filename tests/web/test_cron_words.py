"""Cron expressions in plain words (wording only: the scheduler computes the fires)."""

from __future__ import annotations

import pytest

from dq.web.cron_words import describe


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("*/5 * * * *", "every 5 minutes"),
        ("* * * * *", "every minute"),
        ("0 * * * *", "every hour"),
        ("15 */2 * * *", "every 2 hours at minute 15"),
        ("0 9 * * 1-5", "at 09:00 on Monday through Friday"),
        ("30 2 1 * *", "at 02:30 on day 1 of the month"),
        ("0 8,20 * 1,7 *", "at minute 0, past hour 8 and 20 in January and July"),
        ("@daily", "at 00:00"),
        ("*/10 * * * * *", "every 10 seconds"),  # six fields: seconds first
        ("30 0 12 * * 0,6", "at 12:00:30 on Sunday and Saturday"),
        ("not a cron", "not a cron"),  # what it cannot word is shown as written
    ],
)
def test_describe(expr: str, words: str) -> None:
    assert describe(expr) == words
