"""The state machine: each transition's update, its condition and its events."""

from __future__ import annotations

import pytest

from dq.engine import transitions as t
from dq.engine.storage.base import EventRecord, ExecutionRecord, StepRecord
from dq.engine.transitions import Control, ControlKind, Holder

H = Holder("e1", "job", token=7)


def test_control_has_one_stored_form() -> None:
    assert Control.parse(None) is None and Control.parse("") is None
    assert Control.parse("pause") == t.PAUSE
    cancel = Control.parse("cancel:user: said so")
    assert cancel == Control(ControlKind.CANCEL, "user: said so")
    assert cancel is not None and Control.parse(cancel.encode()) == cancel
    assert Control(ControlKind.CANCEL).encode() == "cancel"
    with pytest.raises(ValueError, match="never stored"):
        t.SHUTDOWN.encode()
    with pytest.raises(ValueError):
        Control.parse("explode")
    assert cancel.stops_at_once and t.LOST.stops_at_once and not t.PAUSE.stops_at_once
    intr = cancel.interrupt()
    assert (intr.kind, intr.reason) == ("cancel", "user: said so")


def test_holder_writes_are_fenced_and_release_the_lease() -> None:
    done = t.complete(H, output={"x": 1}, current_step="s", now=100)
    assert done.update.token == 7 and done.update.statuses is None
    assert done.fields["status"] == "completed" and done.fields["completed_at"] == 100
    assert done.fields["worker_id"] is None and done.fields["lease_until"] is None
    assert [e.type for e in done.events] == ["success"]
    failed = t.fail(H, error={"type": "builtins.ValueError"}, attempt=4, current_step=None, now=5)
    assert [(e.type, e.data.get("attempt")) for e in failed.events] == [("error", 4), ("failure", None)]
    retry = t.retry(H, error={}, retry_count=2, run_at=1500, now=1000)
    assert retry.fields["status"] == "waiting" and retry.fields["run_at"] == 1500
    assert retry.events[1].data == {"attempt": 3, "run_at": 1500, "delay_ms": 500}
    paused = t.suspend(H, "paused", wait_reason="paused", current_step="k", now=9, event=("pause", {}))
    assert "run_at" not in paused.fields and paused.fields["control"] is None
    pending = t.suspend(H, "pending", wait_reason="released", current_step=None, now=9)
    assert pending.fields["run_at"] == 9 and pending.events == []
    released = t.release(H, current_step="k", now=3, reason="storage unavailable")
    assert released.update.statuses == ("running",) and "control" not in released.fields
    batch = t.step_done(H, StepRecord("e1", "k", "k", "run", "completed"), EventRecord("e1", "job", "wake", {"key": "k"}))
    assert batch.fences == {"e1": 7} and batch.updates == [] and [e.type for e in batch.events] == ["wake"]


def test_requests_and_idle_changes_are_conditioned_on_status() -> None:
    rec = ExecutionRecord("e2", "job", "running", retry_count=1)
    asked = t.request(rec, Control(ControlKind.CANCEL, "why"), now=1)
    assert asked.update.statuses == ("running",) and asked.update.token is None
    assert asked.fields == {"control": "cancel:why"}
    assert t.request(rec, None, now=1, event=("resume", {})).fields == {"control": None}
    assert t.pause_idle(rec, now=1).update.statuses == ("pending", "waiting")
    assert t.resume(rec, now=1).update.statuses == ("paused",)
    cancelled = t.cancel_idle(rec, error={}, reason="r", now=2)
    assert cancelled.update.statuses == ("pending", "waiting", "paused")
    again = t.retry_manually(rec, now=4)
    assert again.fields["retry_count"] == 2 and again.events[0].data["attempt"] == 3
    again.apply_to(rec)
    assert rec.status == "pending" and rec.retry_count == 2 and rec.run_at == 4


def test_claim_new_holds_the_execution_with_the_first_token() -> None:
    rec = ExecutionRecord("e3", "job", "pending", created_at=50)
    t.claim_new(rec, "w1", lease_until=5050)
    assert (rec.status, rec.worker_id, rec.token, rec.started_at, rec.lease_until) == ("running", "w1", 1, 50, 5050)
