"""The line of a slot key, decided in memory (`slot_requests`): a waiter keeps one
place however often it asks (found by its order, not by looking at every waiter);
a release hands the slot to the head of the line; a waiter that gives up leaves it."""

from __future__ import annotations

from typing import Any

from dq.engine.limits import Limit
from dq.engine.slot_requests import Request, Round, copy_state, decide, leave, state_key

LIMIT = Limit("resize", 1)
KEY = state_key(LIMIT)


def _ask(state: Any, holder: str, order: tuple[int, int]) -> tuple[bool, Any, Round]:
    work = {KEY: copy_state(state)}
    rnd = Round(1_000)
    decision = decide(Request(holder, order, (LIMIT,)), work, rnd, far_ms=30_000)
    return decision.ok, work[KEY], rnd


def test_a_waiter_that_asks_again_keeps_its_one_place() -> None:
    ok, state, _ = _ask(None, "a", (0, 1))
    assert ok and state["holders"] == ["a"]
    ok, state, _ = _ask(state, "b", (0, 2))
    assert not ok
    ok, state, _ = _ask(state, "c", (-5, 3))  # higher priority: ahead of b
    assert not ok
    for _ in range(3):  # asked again (a re-claim, a safety-net look): no second place
        ok, state, _ = _ask(state, "b", (0, 2))
        assert not ok
    assert [w[2] for w in state["waiters"]] == ["c", "b"]


def test_a_release_hands_the_slot_to_the_head_of_the_line_and_a_leaver_gives_its_place_up() -> None:
    state: Any = {"limit": 1, "holders": ["a"], "waiters": [[-5, 3, "c"], [0, 2, "b"], [0, 4, "d"]]}
    work = {KEY: copy_state(state)}
    rnd = Round(1_000)
    leave(work, KEY, "b", rnd)  # a waiter gives up (a cancelled step): only its place goes
    assert work[KEY]["holders"] == ["a"] and [w[2] for w in work[KEY]["waiters"]] == ["c", "d"]
    leave(work, KEY, "a", rnd)
    assert work[KEY]["holders"] == ["c"] and [w[2] for w in work[KEY]["waiters"]] == ["d"]
    assert rnd.granted == [(KEY, "c")]
    assert state["holders"] == ["a"] and len(state["waiters"]) == 3  # the state read is not changed
