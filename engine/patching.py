"""`patched(change_id)`: change a job's code while executions of it are in flight.

    if patched("send-sms"):
        await run("notify", send_sms)      # the new code
    else:
        await run("notify", send_email)    # what executions started before still replay

An execution that reaches the call on code that has it records a marker step
(kind `patch`, key `patch:<change_id>`) and gets True, now and on every replay.
An execution whose history was recorded by the old code gets False: it is
replaying when its history holds a step first called *after* this point (a
`seq` beyond the current call count) and no marker. The answer depends only on
the history, so it is the same on every replay.

The marker takes no call position (`seq` is the current count, not the next),
so positional keys of unnamed steps (`run(fn)`) are the same with and without
the call: retiring a patch (deleting the `patched` call and the old branch)
leaves every recorded history valid.
"""

from __future__ import annotations

from .context import current
from .event_schema import EventKind
from .ids import now_ms
from .steps import _replayed
from .storage.base import EventRecord, StepRecord
from .transitions import step_done

KIND = "patch"


def patched(change_id: str) -> bool:
    """True on code that has the change (recorded as a marker step), False when
    replaying a history recorded before it. Only inside a handler."""
    if not isinstance(change_id, str) or not change_id or "#" in change_id:
        raise ValueError(f"patched: change_id must be a non-empty string without '#', got {change_id!r}")
    ctx = current()
    key = f"{KIND}:{change_id}"
    if _replayed(ctx, key, KIND, change_id) is not None:
        return True
    if any(step.seq > ctx.calls for step in ctx.history.values()):
        return False  # the old code went past this point without the change
    now = now_ms()
    step = StepRecord(
        ctx.id, key, change_id, KIND, "completed", output=True, started_at=now, completed_at=now,
        job_attempt=ctx.attempt, seq=ctx.calls,
    )  # fmt: skip
    data = {"key": key, "name": change_id, "kind": KIND, "attempt": 1, "duration_ms": 0}
    # Not awaited: the committer writes it in order before any later write of this
    # execution, so no step after this point can be stored without the marker.
    ctx.owner.record(step_done(ctx.holder, step, EventRecord(ctx.id, ctx.job.name, EventKind.STEP_SUCCESS, data, now)))
    ctx.history[key] = step
    return True
