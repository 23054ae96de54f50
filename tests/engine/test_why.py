"""Why an execution is not running, answered from stored state on every adapter.

Each scenario puts an execution in one waiting situation and asks `explain`;
where it matters the question is asked through a second storage handle that
knows nothing of the running queue (as another process would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dq import Queue, create_job, create_pipe, run, sleep
from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import Batch, ExecutionRecord, Storage
from dq.engine.why import WaitReason, explain, explain_record

from .test_lifecycle import until


async def _reason_kind(queue: Queue, eid: str) -> str | None:
    rec = await queue.storage.get_execution(eid)
    assert rec is not None
    reason = await explain(queue, rec, now_ms())
    return reason.kind if reason is not None else None


async def test_concurrency_held_names_key_limit_and_holder(make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]) -> None:
    gate = asyncio.Event()

    @create_job(name="exclusive", concurrency=lambda d: {"id": d["user"], "limit": 1})
    async def exclusive(data: dict[str, str]) -> None:
        await run("work", gate.wait)

    queue = make_queue([exclusive])
    async with queue:
        first = await queue.jobs.exclusive.start({"user": "ada"})
        await until(lambda: _step_running(queue, first.id))
        second = await queue.jobs.exclusive.start({"user": "ada"})
        # It goes back and forth between pending and a claim that finds the key full.
        reason = await _reason_when(queue, second.id, "concurrency")
        assert reason.key == "exclusive:ada" and reason.limit == 1
        assert [h.execution_id for h in reason.holders] == [first.id]
        assert reason.holders[0].status == "running"
        assert first.id in reason.text
        gate.set()
        await second.result()
        done = await queue.storage.get_execution(second.id)
        assert done is not None and await explain(queue, done, now_ms()) is None


async def _reason_when(queue: Queue, eid: str, kind: str) -> WaitReason:
    found: list[WaitReason] = []

    async def check() -> bool:
        rec = await queue.storage.get_execution(eid)
        reason = await explain(queue, rec, now_ms()) if rec is not None else None
        if reason is not None and reason.kind == kind:
            found.append(reason)
        return bool(found)

    await until(check)
    return found[0]


async def _step_running(queue: Queue, eid: str) -> bool:
    steps = await queue.storage.get_steps(eid)
    return any(s.key == "work" and s.status == "running" for s in steps)


async def test_sleeping_says_when_it_wakes(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="napper")
    async def napper(data: Any) -> None:
        await run("before", lambda: 1)
        await sleep("1h")

    queue = make_queue([napper])
    async with queue:
        ex = await queue.jobs.napper.start(None)
        await until(lambda: _status(queue, ex.id, "waiting"))
        rec = await queue.storage.get_execution(ex.id)
        assert rec is not None
        reason = await explain(queue, rec, now_ms())
        assert reason is not None and reason.kind == "sleeping"
        assert reason.until == rec.run_at and reason.until > now_ms() + 3_500_000
        assert reason.step == "sleep"


async def _status(queue: Queue, eid: str, status: str) -> bool:
    rec = await queue.storage.get_execution(eid)
    return rec is not None and rec.status == status


async def test_waiting_for_child_pipe_and_job(make_queue: Callable[..., Queue]) -> None:
    gate = asyncio.Event()
    uploads = create_pipe(name="uploads")

    @create_job(name="kid")
    async def kid(data: Any) -> str:
        await run("block", gate.wait)
        return "done"

    @create_job(name="mom")
    async def mom(data: Any) -> str:
        result: str = await kid.run({"n": 1})
        return result

    @create_job(name="listener")
    async def listener(data: Any) -> Any:
        return await uploads.wait_for({"path": "a.mp3"})

    @create_job(name="watcher")
    async def watcher(data: Any) -> Any:
        return await kid.wait_for({"n": 7})

    queue = make_queue([kid, mom, listener, watcher], pipes={"uploads": uploads})
    async with queue:
        parent = await queue.jobs.mom.start(None)
        listen = await queue.jobs.listener.start(None)
        watch = await queue.jobs.watcher.start(None)
        await until(lambda: _open_kind(queue, parent.id, "child"))
        await until(lambda: _open_kind(queue, listen.id, "wait"))
        await until(lambda: _open_kind(queue, watch.id, "wait"))
        reasons = {}
        for ex in (parent, listen, watch):
            rec = await queue.storage.get_execution(ex.id)
            assert rec is not None and rec.status == "running"
            reasons[ex.id] = await explain(queue, rec, now_ms())
        child = reasons[parent.id]
        assert child is not None and child.kind == "child" and child.target == "kid"
        kids = await queue.jobs.get_all(job_name="kid")
        assert [k.id for k in kids] == [child.child_id]
        assert child.child_status in ("pending", "running")
        pipe = reasons[listen.id]
        assert pipe is not None and pipe.kind == "pipe" and pipe.target == "uploads"
        assert pipe.match == {"path": "a.mp3"} and "a.mp3" in pipe.text
        job = reasons[watch.id]
        assert job is not None and job.kind == "job" and job.target == "kid" and job.match == {"n": 7}
        gate.set()
        await parent.result()
        await queue.pipes.uploads.send({"path": "a.mp3"})
        assert await listen.result() == {"path": "a.mp3"}
        await queue.jobs.watcher.cancel(None)


async def _open_kind(queue: Queue, eid: str, kind: str) -> bool:
    return any(s.kind == kind and s.status == "running" for s in await queue.storage.get_steps(eid))


async def test_paused_execution_paused_job_and_paused_parent(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="child_job")
    async def child_job(data: Any) -> None:
        await run("a", lambda: 1)
        await sleep("1h")

    @create_job(name="parent_job")
    async def parent_job(data: Any) -> None:
        await child_job.run(None)

    @create_job(name="idle")
    async def idle(data: Any) -> None:
        return None

    queue = make_queue([child_job, parent_job, idle])
    async with queue:
        parent = await queue.jobs.parent_job.start(None)
        await until(lambda: _open_kind(queue, parent.id, "child"))
        [kid] = await queue.jobs.get_all(job_name="child_job")
        await until(lambda: _status(queue, kid.id, "waiting"))
        await parent.pause()
        await kid.pause()  # (the cascade from a paused parent is not what is tested here)
        await until(lambda: _status(queue, parent.id, "paused"))
        await until(lambda: _status(queue, kid.id, "paused"))
        assert await _reason_kind(queue, parent.id) == "paused"
        rec = await queue.storage.get_execution(kid.id)
        assert rec is not None
        reason = await explain(queue, rec, now_ms())
        assert reason is not None and reason.kind == "paused" and reason.parent_id == parent.id
        await queue.jobs.idle.pause()
        idle_ex = await queue.jobs.idle.start(None)
        assert await _reason_kind(queue, idle_ex.id) == "job_paused"
        await queue.jobs.idle.resume()
        await idle_ex.result()


async def test_throttled_and_debounced_say_until_when(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="throttled", throttle={"duration": "1h", "mode": "queue"})
    async def throttled(data: Any) -> None:
        return None

    @create_job(name="debounced", debounce="1h")
    async def debounced(data: Any) -> None:
        return None

    queue = make_queue([throttled, debounced])
    async with queue:
        first = await queue.jobs.throttled.start(1)
        await first.result()
        second = await queue.jobs.throttled.start(2)
        reason = await _reason_when(queue, second.id, "throttled")
        assert reason.key == "throttled"
        assert reason.until is not None and reason.until > now_ms() + 3_500_000
        deb = await queue.jobs.debounced.start(1)
        rec = await queue.storage.get_execution(deb.id)
        assert rec is not None
        reason = await explain(queue, rec, now_ms())
        assert reason is not None and reason.kind == "debounced" and reason.key == "debounced"
        assert reason.until == rec.run_at and rec.run_at > now_ms() + 3_500_000


async def test_no_live_worker_then_queued(make_storage: Callable[[], Storage]) -> None:
    """Seen from a process that runs nothing: a due execution with no heartbeat anywhere."""
    storage = make_storage()
    await storage.open()
    try:
        now = now_ms()
        rec = ExecutionRecord(id=new_id(), job_name="elsewhere", status="pending", created_at=now, run_at=now)
        await storage.commit(Batch(executions=[rec]))
        stored = await storage.get_execution(rec.id)
        assert stored is not None
        reason = await explain_record(storage, stored, now_ms())
        assert reason is not None and reason.kind == "no_worker"
        await storage.heartbeat("w1", {"host": "h", "pid": 1})
        reason = await explain_record(storage, stored, now_ms())
        assert reason is not None and reason.kind == "queued"
        later = ExecutionRecord(id=new_id(), job_name="elsewhere", status="pending", created_at=now, run_at=now + 3_600_000)
        await storage.commit(Batch(executions=[later]))
        stored = await storage.get_execution(later.id)
        assert stored is not None
        reason = await explain_record(storage, stored, now_ms())
        assert reason is not None and reason.kind == "scheduled" and reason.until == later.run_at
    finally:
        await storage.aclose()
