"""The execution state machine: every way an execution's stored state changes, one
function each, returning a typed update. Callers commit what these return; they never
build an execution's fields by hand.

    pending -> running -> completed          complete()
                 |  \\-> failed               fail()            (retries exhausted)
                 |  \\-> cancelled            cancel_running()  (at a step boundary)
                 |-> waiting -> pending      suspend(), retry() (sleep, wait, child, backoff)
                 |-> paused  -> pending      suspend("paused"), resume()
                 |-> pending                 release()         (storage unreachable, shutdown)
    pending/waiting/paused -> cancelled      cancel_idle()
    pending -> cancelled ("debounced")       supersede()       (a later trigger of its debounce series)
    pending/waiting -> paused                pause_idle()
    failed/cancelled -> pending              retry_manually()
    pending/waiting -> running               claim: the adapters' `Storage.claim` (one
                                             atomic statement each), or `claim_new` for an
                                             execution its creator stores already claimed
                                             (`unclaim_new` when that batch did not apply)
    pending -> running                       hand_over(): a released slot claims the waiter
                                             parked here, in the release's own write
    pending (due now)                        due_now(): a waiter granted a slot elsewhere
    running (held elsewhere) -> (request)    request(): a stored `Control` its holder
                                             reads at its next commit or lease renewal;
                                             withdraw_pause() takes a pause request back
    lose lease                               nothing is written: the holder's token is
                                             stale, `Storage.commit` refuses its writes

Every update of a running execution is fenced by the holder's token (`Holder`): a
process that lost the execution cannot change it. Updates of executions nobody holds
are conditioned on their current status (`ExecutionUpdate.statuses`), so a concurrent
change makes them not apply and the caller reads again.

`Control` is what asks a running execution to stop: `pause` and `cancel` are stored
requests (any process may write them); `shutdown`, `lost`, `unavailable` and
`timeout` are reasons inside the holding process only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .errors import Interrupt
from .event_schema import EventKind
from .storage.base import (
    Batch,
    EventRecord,
    ExecutionFields,
    ExecutionRecord,
    ExecutionUpdate,
    StepRecord,
)

_SUCCESS = EventKind.SUCCESS  # a module global: read on every completion

#: Where an execution goes when its holder lets it go without ending it.
SuspendStatus = Literal["waiting", "paused", "pending"]
EndStatus = Literal["completed", "failed", "cancelled"]


class ControlKind(enum.Enum):
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    LOST = "lost"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"


#: The kinds another process may ask for (stored in the execution's `control`).
STORED_CONTROLS = frozenset({ControlKind.PAUSE, ControlKind.CANCEL})


@dataclass(frozen=True, slots=True)
class Control:
    """Why a running execution should stop, and for cancels the user's reason."""

    kind: ControlKind
    reason: str | None = None

    def encode(self) -> str:
        """The stored form: `pause`, `cancel` or `cancel:<reason>`."""
        if self.kind not in STORED_CONTROLS:
            raise ValueError(f"control {self.kind.value!r} is never stored")
        return self.kind.value if self.reason is None else f"{self.kind.value}:{self.reason}"

    @staticmethod
    def parse(text: str | None) -> Control | None:
        """The stored form back (None for none). The one place that reads it."""
        if not text:
            return None
        kind, sep, reason = text.partition(":")
        return Control(ControlKind(kind), reason if sep and reason else None)

    def interrupt(self) -> Interrupt:
        """The BaseException that unwinds the handler for this control."""
        return Interrupt(self.kind.value, self.reason)

    @property
    def stops_at_once(self) -> bool:
        """Cancel and lost interrupt a handler anywhere; the others wait for a step boundary."""
        return self.kind in (ControlKind.CANCEL, ControlKind.LOST)


PAUSE = Control(ControlKind.PAUSE)
SHUTDOWN = Control(ControlKind.SHUTDOWN)
LOST = Control(ControlKind.LOST)
UNAVAILABLE = Control(ControlKind.UNAVAILABLE)
TIMEOUT = Control(ControlKind.TIMEOUT)


class Holder(NamedTuple):
    """A process's claim on a running execution: its id, job and fencing token.
    (A NamedTuple: one is made per attempt, cheaply.)"""

    id: str
    job_name: str
    token: int


@dataclass(slots=True)
class Transition:
    """One state change: the conditional update of the execution and its events."""

    update: ExecutionUpdate
    events: list[EventRecord] = field(default_factory=list)

    @property
    def fields(self) -> ExecutionFields:
        return self.update.fields

    def batch(self, into: Batch | None = None) -> Batch:
        """A batch with this change (appended to `into` when given)."""
        batch = into if into is not None else Batch()
        batch.updates.append(self.update)
        batch.events.extend(self.events)
        return batch

    def apply_to(self, rec: ExecutionRecord) -> None:
        """Mirror the committed change on an in-memory record."""
        for name, value in self.update.fields.items():
            setattr(rec, name, value)


def _held(h: Holder, fields: ExecutionFields, *events: EventRecord, only_running: bool = False) -> Transition:
    statuses = ("running",) if only_running else None
    return Transition(ExecutionUpdate(h.id, fields, token=h.token, statuses=statuses), list(events))


def _idle(rec: ExecutionRecord, fields: ExecutionFields, statuses: tuple[str, ...], *events: EventRecord) -> Transition:
    return Transition(ExecutionUpdate(rec.id, fields, statuses=statuses), list(events))


#: The holder lets go of the execution (spread into a new dict by each transition).
_RELEASED: ExecutionFields = {"worker_id": None, "lease_until": None}


# -- claim -------------------------------------------------------------------------------
def claim_new(rec: ExecutionRecord, worker_id: str, lease_until: int) -> None:
    """An execution stored already claimed by the process that creates it (no claim
    round trip): running, token 1, its lease on the storage clock."""
    rec.status, rec.worker_id, rec.token = "running", worker_id, 1
    rec.started_at = rec.created_at
    rec.lease_until = lease_until


def unclaim_new(rec: ExecutionRecord) -> None:
    """Undo `claim_new` when the batch that would have stored the record was not
    applied (a precondition failed): nothing was written, the record is new again."""
    rec.status, rec.worker_id, rec.token, rec.started_at, rec.lease_until = "pending", None, 0, None, None


# -- a running execution, written by its holder -----------------------------------------
def enter_step(h: Holder, key: str) -> ExecutionUpdate:
    """Record that the handler is at step `key` (for steps that may wait long: a sleep,
    a child; others leave it to the step record and the final write)."""
    return ExecutionUpdate(h.id, {"current_step": key}, token=h.token)


def step_done(h: Holder, step: StepRecord, event: EventRecord) -> Batch:
    """A step's record (started, completed, failed, woken) and its event, fenced."""
    return Batch([], [], [step], [event], fences={h.id: h.token})


def complete(h: Holder, *, output: Any, current_step: str | None, now: int) -> Transition:
    fields: ExecutionFields = {
        "status": "completed", "output": output, "error": None, "completed_at": now,
        "control": None, "wait_reason": None, "current_step": current_step, **_RELEASED,
    }  # fmt: skip
    # Built directly (no helper calls): every execution that completes comes here.
    return Transition(ExecutionUpdate(h.id, fields, h.token), [EventRecord(h.id, h.job_name, _SUCCESS, {"output": output}, now)])


def fail(h: Holder, *, error: dict[str, Any], attempt: int, current_step: str | None, now: int) -> Transition:
    """Retries exhausted (or not retryable): failed for good."""
    fields: ExecutionFields = {
        "status": "failed", "output": None, "error": error, "completed_at": now,
        "control": None, "wait_reason": None, "current_step": current_step, **_RELEASED,
    }  # fmt: skip
    return _held(
        h, fields,
        EventRecord(h.id, h.job_name, EventKind.ERROR, {"attempt": attempt, "error": error}, now),
        EventRecord(h.id, h.job_name, EventKind.FAILURE, {"error": error}, now),
    )  # fmt: skip


def cancel_running(
    h: Holder, *, error: dict[str, Any], reason: str | None, current_step: str | None, now: int
) -> Transition:
    """The holder acts on a cancel (or a throttle in discard mode)."""
    fields: ExecutionFields = {
        "status": "cancelled", "output": None, "error": error, "completed_at": now,
        "control": None, "wait_reason": None, "current_step": current_step, **_RELEASED,
    }  # fmt: skip
    return _held(h, fields, EventRecord(h.id, h.job_name, EventKind.CANCEL, {"reason": reason}, now))


def ending(
    h: Holder,
    status: EndStatus,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    reason: str | None = None,
    attempt: int,
    current_step: str | None,
    now: int,
) -> Transition:
    """The transition of one of the three endings (`complete`, `fail`, `cancel_running`)."""
    if status == "completed":
        return complete(h, output=output, current_step=current_step, now=now)
    if status == "failed":
        return fail(h, error=error or {}, attempt=attempt, current_step=current_step, now=now)
    return cancel_running(h, error=error or {}, reason=reason, current_step=current_step, now=now)


def retry(h: Holder, *, error: dict[str, Any], retry_count: int, run_at: int, now: int) -> Transition:
    """A failed attempt with retries left: waiting until `run_at`, then attempt
    `retry_count + 1` replays the completed steps."""
    fields: ExecutionFields = {
        "status": "waiting", "retry_count": retry_count, "run_at": run_at, "error": error,
        "wait_reason": "retry", "current_step": None, **_RELEASED,
    }  # fmt: skip
    return _held(
        h, fields,
        EventRecord(h.id, h.job_name, EventKind.ERROR, {"attempt": retry_count, "error": error}, now),
        EventRecord(h.id, h.job_name, EventKind.RETRY, {"attempt": retry_count + 1, "run_at": run_at, "delay_ms": run_at - now}, now),
    )  # fmt: skip


def suspend(
    h: Holder,
    status: SuspendStatus,
    *,
    wait_reason: str,
    current_step: str | None,
    now: int,
    run_at: int | None = None,
    event: tuple[EventKind, dict[str, Any]] | None = None,
) -> Transition:
    """The holder lets the execution go without ending it: waiting until `run_at`
    (sleep, backoff, a wait), paused, or pending again (held back, shut down)."""
    fields: ExecutionFields = {
        "status": status, "wait_reason": wait_reason, "control": None,
        "current_step": current_step, **_RELEASED,
    }  # fmt: skip
    if run_at is not None:
        fields["run_at"] = run_at
    elif status == "pending":
        fields["run_at"] = now
    events = [EventRecord(h.id, h.job_name, event[0], event[1], now)] if event is not None else []
    return _held(h, fields, *events)


def release(h: Holder, *, current_step: str | None, now: int, reason: str) -> Transition:
    """Back to pending after storage cut the attempt short; a pause or cancel requested
    meanwhile (`control`) is kept for the next claim to act on."""
    fields: ExecutionFields = {
        "status": "pending", "run_at": now, "wait_reason": "released",
        "current_step": current_step, **_RELEASED,
    }  # fmt: skip
    return _held(h, fields, EventRecord(h.id, h.job_name, EventKind.RELEASED, {"reason": reason}, now), only_running=True)


def hand_over(rec: ExecutionRecord, worker_id: str, *, now: int, lease_until: int) -> Transition:
    """A released slot is handed to a waiter parked in this process: claimed (pending ->
    running, the next fencing token) in the same write as the release."""
    fields: ExecutionFields = {
        "status": "running", "worker_id": worker_id, "token": rec.token + 1, "run_at": now,
        "lease_until": lease_until,
    }  # fmt: skip
    return Transition(ExecutionUpdate(rec.id, fields, token=rec.token, statuses=("pending",)))


def due_now(execution_id: str, *, now: int) -> Transition:
    """A waiter granted a slot (or its reserved rate start) becomes due at once, for the
    first process that claims it."""
    return Transition(ExecutionUpdate(execution_id, {"run_at": now}, statuses=("pending",)))


# -- requests from any process -------------------------------------------------------------
def request(
    rec: ExecutionRecord,
    control: Control | None,
    *,
    now: int,
    event: tuple[EventKind, dict[str, Any]] | None = None,
    by: str | None = None,
) -> Transition:
    """Ask the holder of a running execution to pause or cancel (or withdraw a pause:
    `control` None); it acts at its next step boundary, commit or lease renewal. With
    `by` (who asked), a `requested` event records the request."""
    events = [EventRecord(rec.id, rec.job_name, event[0], event[1], now)] if event is not None else []
    if by is not None and control is not None:
        data: dict[str, Any] = {"action": control.kind.value, "by": by}
        if control.kind is ControlKind.CANCEL:
            data["reason"] = control.reason
        events.append(EventRecord(rec.id, rec.job_name, EventKind.REQUESTED, data, now))
    return _idle(rec, {"control": control.encode() if control is not None else None}, ("running",), *events)


def withdraw_pause(rec: ExecutionRecord, *, now: int, by: str | None = None) -> Transition:
    """Resume a running execution whose pause was requested but not yet acted on."""
    return _idle(
        rec, {"control": None}, ("running",),
        EventRecord(rec.id, rec.job_name, EventKind.RESUME, _by(by), now),
    )  # fmt: skip


def _by(by: str | None) -> dict[str, Any]:
    return {} if by is None else {"by": by}


def pause_idle(rec: ExecutionRecord, *, now: int, by: str | None = None) -> Transition:
    return _idle(
        rec, {"status": "paused", "wait_reason": "paused"}, ("pending", "waiting"),
        EventRecord(rec.id, rec.job_name, EventKind.PAUSE, _by(by), now),
    )  # fmt: skip


def resume(rec: ExecutionRecord, *, now: int, by: str | None = None) -> Transition:
    """Paused -> pending, due now."""
    return _idle(
        rec, {"status": "pending", "run_at": now, "wait_reason": "resumed", "control": None}, ("paused",),
        EventRecord(rec.id, rec.job_name, EventKind.RESUME, _by(by), now),
    )  # fmt: skip


def cancel_idle(
    rec: ExecutionRecord, *, error: dict[str, Any], reason: str | None, now: int, by: str | None = None
) -> Transition:
    """Cancel an execution nobody runs (pending, waiting or paused)."""
    fields: ExecutionFields = {
        "status": "cancelled", "completed_at": now, "error": error,
        "control": None, "wait_reason": None, **_RELEASED,
    }  # fmt: skip
    return _idle(
        rec, fields, ("pending", "waiting", "paused"),
        EventRecord(rec.id, rec.job_name, EventKind.CANCEL, {"reason": reason, **_by(by)}, now),
    )  # fmt: skip


def supersede(rec: ExecutionRecord, *, by: str, error: dict[str, Any], now: int) -> Transition:
    """Cancel a pending debounced execution that the trigger `by` supersedes (reason
    `debounced`); only while it is still pending: one claimed meanwhile runs. Commit
    the update with the trigger, and the event once the update applied."""
    fields: ExecutionFields = {
        "status": "cancelled", "completed_at": now, "error": error,
        "control": None, "wait_reason": None, **_RELEASED,
    }  # fmt: skip
    return _idle(
        rec, fields, ("pending",),
        EventRecord(rec.id, rec.job_name, EventKind.CANCEL, {"reason": "debounced", "by": by}, now),
    )  # fmt: skip


def retry_manually(rec: ExecutionRecord, *, now: int, by: str | None = None) -> Transition:
    """A failed or cancelled execution runs again (its completed steps replay)."""
    fields: ExecutionFields = {
        "status": "pending", "run_at": now, "retry_count": rec.retry_count + 1,
        "completed_at": None, "error": None, "output": None, "control": None,
        "wait_reason": "retry",
    }  # fmt: skip
    data = {"attempt": rec.retry_count + 2, "manual": True, "run_at": now, "delay_ms": 0, **_by(by)}
    return _idle(rec, fields, ("failed", "cancelled"), EventRecord(rec.id, rec.job_name, EventKind.RETRY, data, now))
