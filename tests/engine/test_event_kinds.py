"""Every event the engine writes goes through the schema (engine/event_schema.py):
its kind is an `EventKind` member, never a string spelled out again, and its data
has the keys of the kind's TypedDict. Checked twice: statically over engine/, and
on a workload that writes every kind the engine still writes (memory storage keeps
the written objects, so a kind written as a plain string shows)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

from dq import create_job, create_pipe, create_queue, log, run, sleep
from dq.engine.event_schema import EventKind, check
from dq.engine.storage.memory import MemoryStorage

from .conftest import FAST
from .test_lifecycle import until

ENGINE = Path(__file__).resolve().parents[2] / "engine"
#: Kinds that logs written by earlier versions hold but the engine no longer writes
#: (a debounced trigger now writes `trigger`, and `cancel` for the one it supersedes).
NOT_WRITTEN = {EventKind.DEBOUNCED}
#: Where an event's kind is passed: EventRecord(execution_id, job_name, KIND, ...),
#: steps._event(ctx, KIND, ...), owner.send(ctx, KIND, ...), Hooks' record(KIND, ...).
KIND_ARG = {"EventRecord": 2, "_event": 1, "send": 1, "_record": 0, "_record_event": 0}


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def spelled_out_kinds() -> list[str]:
    """Event kinds written in engine/ as a string where an EventKind belongs."""
    kinds = {k.value for k in EventKind}
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        if path.name == "event_schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            at = KIND_ARG.get(_name(node.func))
            args: list[ast.expr] = []
            if at is not None and len(node.args) > at:
                args.append(node.args[at])
            args += [kw.value for kw in node.keywords if kw.arg == "type"]
            # suspend(..., event=(KIND, data)) and transitions taking `event`
            args += [kw.value.elts[0] for kw in node.keywords
                     if kw.arg == "event" and isinstance(kw.value, ast.Tuple) and kw.value.elts]  # fmt: skip
            for arg in args:
                if isinstance(arg, ast.Constant) and arg.value in kinds:
                    found.append(f"{path.relative_to(ENGINE)}:{arg.lineno}: {arg.value!r}")
    return found


def test_no_event_kind_is_spelled_out_in_the_engine() -> None:
    assert spelled_out_kinds() == []


def test_the_scan_sees_a_spelled_out_kind(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "bad.py").write_text(
        'EventRecord(None, "j", "pipe_send", {}, 0)\nowner.send(ctx, "log", {})\n'
        'owner.suspend(ctx, "paused", event=("pause", {}))\n'
    )
    monkeypatch.setattr(f"{__name__}.ENGINE", tmp_path)
    assert spelled_out_kinds() == ["bad.py:1: 'pipe_send'", "bad.py:2: 'log'", "bad.py:3: 'pause'"]


async def test_every_kind_written_is_an_event_kind_with_its_schema() -> None:
    notes = create_pipe("notes", input=dict)
    attempts: dict[str, int] = {}
    gate = asyncio.Event()

    @create_job(name="child")
    async def child(n: int) -> int:
        return n * 2

    def bad_hook(data: Any, output: Any) -> None:
        raise RuntimeError("a hook that raises")

    @create_job(name="parent", retry=1, backoff=10, on_success=bad_hook)
    async def parent(n: int) -> int:
        log("doubling", n=n)
        doubled = int(await child.run(n))
        await sleep(20)
        await notes.send({"n": doubled})
        attempts["parent"] = attempts.get("parent", 0) + 1
        if attempts["parent"] == 1:
            raise ValueError("the first attempt fails")
        return doubled

    # A message without "n" cannot start `from_notes`: a trigger_error naming the pipe.
    @create_job(name="from_notes", trigger=[notes.into(lambda m: int(m["n"]))])
    async def from_notes(n: int) -> int:
        return n

    # An output of `from_notes` of 0 cannot start `from_job`: a trigger_error naming the job.
    @create_job(name="from_job", trigger=[from_notes.into(lambda out: 10 // out)])
    async def from_job(n: int) -> int:
        return n

    @create_job(name="ticks", cron="* * * * * *")
    async def ticks(data: None) -> None:
        return None

    @create_job(name="throttled", throttle={"duration": "200ms", "mode": "queue"})
    async def throttled(n: int) -> int:
        return n

    @create_job(name="debounced", debounce="100ms")
    async def debounced(n: int) -> int:
        return n

    @create_job(name="waiter")
    async def waiter(data: None) -> Any:
        return await notes.wait_for({"n": 99})

    @create_job(name="held")
    async def held(data: None) -> None:
        await run("first", lambda: 1)
        await gate.wait()

    def boom() -> None:
        raise RuntimeError("a step that fails")

    @create_job(name="fails", retry=0)
    async def fails(data: None) -> None:
        await run("boom", boom, retry=0)

    @create_job(name="sleeper")
    async def sleeper(data: None) -> None:
        await sleep("1h")

    storage = MemoryStorage()
    queue = create_queue(
        jobs=[child, parent, from_notes, from_job, ticks, throttled, debounced, waiter, held, fails, sleeper],
        pipes=[notes], storage=storage, **{**FAST, "shutdown_grace": "50ms"},
    )  # fmt: skip
    async with queue:
        assert await queue.jobs.parent.run(4) == 8
        await queue.pipes.notes.send({"m": 1})  # outside a handler: pipe_send; no "n": trigger_error
        await queue.pipes.notes.send({"n": 0})  # from_notes returns 0: from_job's trigger_error
        w = await queue.jobs.waiter.start(None)
        await until(lambda: _kinds_written(storage, EventKind.WAIT, 1))  # messages count from then on
        await queue.pipes.notes.send({"n": 99})
        assert await w.result() == {"n": 99}
        for e in await queue.jobs.throttled.start_many([1, 2]):
            await e.result()
        first = await queue.jobs.debounced.start(1)
        last = await queue.jobs.debounced.start(2)
        assert await last.result() == 2
        await first.refresh()
        failed = await queue.jobs.fails.start(None)
        await until(lambda: _has_status(queue, failed.id, "failed"))
        asleep = await queue.jobs.sleeper.start(None)
        await until(lambda: _has_status(queue, asleep.id, "waiting"))
        assert await asleep.pause()  # idle: paused at once (`pause`)
        assert await asleep.resume()
        blocked = await queue.jobs.held.start(None)
        await until(lambda: _has_step(queue, blocked.id, "first"))
        assert await blocked.pause()  # running: asked (`requested`), then withdrawn
        assert await blocked.resume()
        assert await blocked.cancel("enough")
        await until(lambda: _has_status(queue, blocked.id, "cancelled"))
        again = await blocked.replay(from_step="first", by="dashboard")
        await until(lambda: _has_status(queue, again.id, "running"))
        await until(lambda: _kinds_written(storage, EventKind.TRIGGER_ERROR, 2))
        await until(lambda: _cron_ran(storage), timeout=5)
        # Closing with `again` still running: it is released (`released`) for later.
    events = await storage.read_events(0, limit=100_000)
    wrong = [f"{ev.type!r} ({type(ev.type).__name__})" for ev in events if not isinstance(ev.type, EventKind)]
    assert wrong == []
    assert [p for ev in events for p in check(ev.type, ev.data)] == []
    assert {ev.type for ev in events} == set(EventKind) - NOT_WRITTEN


async def _has_step(queue: Any, execution_id: str, key: str) -> bool:
    return any(s.key == key for s in await queue.storage.get_steps(execution_id))


async def _has_status(queue: Any, execution_id: str, status: str) -> bool:
    rec = await queue.storage.get_execution(execution_id)
    return rec is not None and rec.status == status


async def _kinds_written(storage: MemoryStorage, kind: EventKind, n: int) -> bool:
    return sum(ev.type == kind for ev in await storage.read_events(0, limit=100_000)) >= n


async def _cron_ran(storage: MemoryStorage) -> bool:
    return any(ev.type == EventKind.TRIGGER and "cron" in ev.data for ev in await storage.read_events(0, limit=100_000))
