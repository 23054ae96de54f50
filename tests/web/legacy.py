"""A stored execution with text no encoder accepts, as rows written before inputs were checked."""

from __future__ import annotations

from typing import Any

from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import Batch, EventRecord, ExecutionRecord, StepRecord, Storage

BAD_INPUT: dict[str, Any] = {"id": "\ud800", "name\udc00": ["ok", "\ud83d"]}


async def write_legacy_row(storage: Storage, job_name: str = "broken") -> str:
    """Commit, bypassing validation, an execution whose input, output, error, step and
    events hold lone surrogates. Returns its id."""
    eid, now = new_id(), now_ms()
    error = {"type": "builtins.ValueError", "message": "cut \ud800 emoji", "traceback": "Traceback\n\udc80"}
    rec = ExecutionRecord(
        id=eid, job_name=job_name, status="failed", input=BAD_INPUT, output={"o": "\udfff"}, error=error,
        created_at=now, run_at=now, started_at=now, completed_at=now + 5, current_step="explode",
    )  # fmt: skip
    step = StepRecord(execution_id=eid, key="explode", name="explode", kind="run", status="failed",
                      output="\ud800", error=error, started_at=now, completed_at=now + 4, seq=1)  # fmt: skip
    events = [
        EventRecord(eid, job_name, "trigger", {"input": BAD_INPUT}, at=now),
        EventRecord(eid, job_name, "step_start", {"key": "explode", "name": "explode", "attempt": 1}, at=now + 1),
        EventRecord(eid, job_name, "log", {"key": "explode", "message": "line \ud800"}, at=now + 2),
        EventRecord(eid, job_name, "step_failure", {"key": "explode", "attempt": 1, "error": error}, at=now + 4),
        EventRecord(eid, job_name, "failure", {"error": error}, at=now + 5),
    ]
    await storage.commit(Batch(executions=[rec], steps=[step], events=events))
    return eid


async def append_legacy_log(storage: Storage, execution_id: str, job_name: str, message: str) -> None:
    """One more event for an execution: a log line (its text as given, surrogates included)."""
    event = EventRecord(execution_id, job_name, "log", {"key": "explode", "message": message}, at=now_ms())
    await storage.commit(Batch(events=[event]))
