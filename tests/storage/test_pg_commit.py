"""PostgreSQL's commit function (dq_commit_v1, sql_pg_commit.py): the same decisions and
stored result as the Python commit (`SqlStorage._commit`, over random batches), its
reads postdating its locks, its interlock with the Python path, and its migration."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from dq.engine.storage.base import (
    Batch,
    CommitResult,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
    PipeMessage,
    StepRecord,
    Storage,
)
from dq.engine.storage.sql import SqlStorage
from dq.engine.storage.sql_pg_function import FUNCTION, V1
from dq.engine.storage.sql_postgres import _STATE_LOCK_SPACE, PostgresStorage

from .conftest import _CLEAR_DATA

EXISTING = ("a", "b", "c")
NEW = ("n1", "n2")
STATUSES = ("pending", "running", "waiting", "completed")
KEYS = ("k1", "k2", "slots:x")
VALUES = st.sampled_from([0, 1, [1, 2], {"a": 1, "b": [True, None]}, "s"])


def _execution(eid: str, token: int = 0, status: str = "pending", control: str | None = None) -> ExecutionRecord:
    return ExecutionRecord(id=eid, job_name="job", status=status, token=token, control=control, created_at=1, run_at=1)


_fields = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(STATUSES),
        "token": st.integers(0, 2),
        "control": st.sampled_from([None, "cancel"]),
        "run_at": st.integers(0, 5),
        "output": VALUES,
        "worker_id": st.sampled_from([None, "w"]),
    },
).filter(bool)  # an update that sets nothing is an error of the Python path (no SET)
_ids = st.sampled_from(EXISTING + NEW + ("zz",))  # zz: never exists


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """The stored executions and state before, and the batch's parts."""
    existing = [
        (eid, draw(st.integers(0, 2)), draw(st.sampled_from(STATUSES)), draw(st.sampled_from([None, "cancel"])))
        for eid in EXISTING
        if draw(st.booleans())
    ]
    state = draw(st.dictionaries(st.sampled_from(KEYS), VALUES))
    parts = {
        "new": draw(st.lists(st.sampled_from(NEW), unique=True)),
        "new_status": draw(st.sampled_from(STATUSES)),
        "updates": draw(
            st.lists(
                st.tuples(
                    _ids,
                    _fields,
                    st.none() | st.integers(0, 2),
                    st.none() | st.lists(st.sampled_from(STATUSES), unique=True).map(tuple),
                ),
                max_size=5,
            )
        ),
        "fences": draw(st.dictionaries(_ids, st.integers(0, 2), max_size=3)),
        "steps": draw(st.lists(st.tuples(_ids, st.sampled_from(["s1", "s2"]), VALUES), max_size=4)),
        "events": draw(st.lists(st.none() | _ids, max_size=4)),
        "messages": draw(st.integers(0, 2)),
        "state": draw(st.dictionaries(st.sampled_from(KEYS), st.none() | VALUES, max_size=2)),
        "expect": draw(st.dictionaries(st.sampled_from(KEYS), st.none() | VALUES, max_size=2)),
    }
    return existing, state, parts


def _batch(parts: dict[str, Any]) -> Batch:
    """A new Batch each call: a commit takes its records over (their seqs)."""
    return Batch(
        executions=[_execution(eid, status=parts["new_status"]) for eid in parts["new"]],
        updates=[ExecutionUpdate(eid, dict(fields), token, statuses) for eid, fields, token, statuses in parts["updates"]],  # type: ignore[arg-type]
        steps=[StepRecord(eid, key, "step", "run", "completed", output=out) for eid, key, out in parts["steps"]],
        events=[EventRecord(eid, "job", f"e{i}", {"i": i}, at=i) for i, eid in enumerate(parts["events"])],
        messages=[PipeMessage("p", {"m": i}, at=i) for i in range(parts["messages"])],
        state=dict(parts["state"]),
        fences=dict(parts["fences"]),
        expect=dict(parts["expect"]),
    )


async def _outcome(storage: Storage, existing: list[Any], state: dict[str, Any], parts: dict[str, Any]) -> Any:
    """Set up, commit the batch, and read back what the comparison needs."""
    await storage.commit(Batch(executions=[_execution(*row) for row in existing], state=dict(state)))
    try:
        result: CommitResult | str = await storage.commit(_batch(parts))
    except ValueError as exc:
        result = f"ValueError: {exc}"
    ids = EXISTING + NEW + ("zz",)
    executions = [await storage.get_execution(eid) for eid in ids]
    steps = [[(s.key, s.output) for s in await storage.get_steps(eid)] for eid in ids]
    events = [(e.seq, e.execution_id, e.type) for e in await storage.read_events()]
    messages = [(m.seq, m.data) for m in await storage.read_messages("p")]
    stored_state = await storage.list_state("")
    if isinstance(result, CommitResult):
        summary: Any = (
            result.applied, result.refused, result.controls, result.conflict,
            [(e.seq, e.execution_id, e.type) for e in result.events],
        )  # fmt: skip
    else:
        summary = result
    return summary, executions, steps, events, messages, stored_state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_function_decides_as_the_python_commit(
    pg_database: str, scenario: tuple[list[Any], dict[str, Any], dict[str, Any]]
) -> None:
    existing, state, parts = scenario

    async def outcome(function: bool) -> Any:
        conn = await asyncpg.connect(pg_database)
        try:
            await conn.execute(_CLEAR_DATA)
            await conn.execute("UPDATE seq_counters SET events = 0, messages = 0")  # seqs from 1
        finally:
            await conn.close()
        storage = SqlStorage.postgres(pg_database)
        assert isinstance(storage, PostgresStorage)
        storage.commit_function = function
        await storage.open()
        try:
            return await _outcome(storage, existing, state, parts)
        finally:
            await storage.aclose()

    async def run() -> tuple[Any, Any]:
        return await outcome(True), await outcome(False)

    got, want = asyncio.run(run())
    assert got == want
    summary = got[0]
    if isinstance(summary, tuple):  # what the example exercised (--hypothesis-show-statistics)
        event("conflict" if summary[3] else f"applied {sum(summary[0])}/{len(summary[0])}, refused {len(summary[1])}")


async def _blocked(conn: asyncpg.Connection, needle: str) -> None:
    """Until a backend running `needle` waits for a lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position($1 in query) > 0"
        " AND pid <> pg_backend_pid()"
    )
    while not await conn.fetchval(query, needle):
        await asyncio.sleep(0.01)


async def test_the_state_read_postdates_the_advisory_locks(postgres_factory: Any) -> None:
    """A compare-and-set waits for the key's lock, then reads what its holder committed:
    the function's read takes a snapshot after its locks (VOLATILE, READ COMMITTED)."""
    storage = await postgres_factory()
    assert isinstance(storage, PostgresStorage)
    storage.commit_function = True
    await storage.commit(Batch(state={"k": 1}))
    holder = await asyncpg.connect(storage._raw_dsn)
    watcher = await asyncpg.connect(storage._raw_dsn)
    try:
        for expected, conflict in ((1, True), (2, False)):
            await storage.commit(Batch(state={"k": 1}))
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT pg_advisory_xact_lock($1::int, hashtext('k'))", _STATE_LOCK_SPACE)
            await holder.execute("UPDATE state SET value = '2' WHERE key = 'k'")
            commit = asyncio.ensure_future(storage.commit(Batch(state={"k": 3}, expect={"k": expected})))
            await _blocked(watcher, FUNCTION)
            await tx.commit()
            result = await commit
            assert result.conflict is conflict
            assert await storage.get_state(["k"]) == {"k": 2 if conflict else 3}
    finally:
        await holder.close()
        await watcher.close()


async def test_fences_read_the_row_its_lock_holder_committed(postgres_factory: Any) -> None:
    storage = await postgres_factory()
    assert isinstance(storage, PostgresStorage)
    storage.commit_function = True
    await storage.commit(Batch(executions=[_execution("A", token=1, status="running")]))
    holder = await asyncpg.connect(storage._raw_dsn)
    watcher = await asyncpg.connect(storage._raw_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("UPDATE executions SET token = 2, control = 'cancel' WHERE id = 'A'")
        upd = ExecutionUpdate("A", {"status": "completed"}, token=1)
        steps = [StepRecord("A", "s", "s", "run", "completed")]
        commit = asyncio.ensure_future(storage.commit(Batch(updates=[upd], steps=steps, fences={"A": 1})))
        await _blocked(watcher, FUNCTION)
        await tx.commit()
        result = await commit
        assert result.refused == {"A"} and result.applied == [False]
        assert await storage.get_steps("A") == []
        rec = await storage.get_execution("A")
        assert rec is not None and rec.status == "running"
    finally:
        await holder.close()
        await watcher.close()


async def test_the_function_and_the_python_commit_interlock(pg_database: str, postgres_factory: Any) -> None:
    """Concurrent compare-and-set increments through both paths: each one that
    reports success added one, none is lost."""
    await postgres_factory()  # empties the database
    fn = SqlStorage.postgres(pg_database)
    py = SqlStorage.postgres(pg_database)
    assert isinstance(fn, PostgresStorage) and isinstance(py, PostgresStorage)
    fn.commit_function, py.commit_function = True, False
    await fn.open()
    await py.open()
    try:
        await fn.commit(Batch(state={"n": 0}))

        async def bump(storage: Storage, rounds: int) -> int:
            done = 0
            while done < rounds:
                cur = (await storage.get_state(["n"]))["n"]
                result = await storage.commit(Batch(state={"n": cur + 1}, expect={"n": cur}))
                done += not result.conflict
            return done

        counts = await asyncio.gather(bump(fn, 15), bump(py, 15), bump(fn, 15), bump(py, 15))
        assert (await fn.get_state(["n"]))["n"] == sum(counts) == 60
    finally:
        await fn.aclose()
        await py.aclose()


async def test_migration_8_installs_the_function_on_a_database_made_before_it(pg_empty_dsn: str) -> None:
    storage = SqlStorage.postgres(pg_empty_dsn)
    await storage.open()
    await storage.commit(Batch(executions=[_execution("OLD", status="running", token=1)]))
    async with storage.engine.begin() as conn:  # back to what versions 1-7 (and 9-11) left
        await conn.execute(text(f"DROP FUNCTION {V1}(jsonb)"))
        await conn.execute(text(f"DROP FUNCTION {FUNCTION}(jsonb)"))
        await conn.execute(text("DELETE FROM schema_version WHERE version IN (8, 12)"))
    await storage.aclose()
    upgraded = SqlStorage.postgres(pg_empty_dsn)
    await upgraded.open()
    async with upgraded.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM schema_version WHERE version IN (8, 12)"))).scalar_one() == 2
    upd = ExecutionUpdate("OLD", {"status": "completed"}, token=1)
    result = await upgraded.commit(Batch(updates=[upd], fences={"OLD": 1}, events=[EventRecord("OLD", "job", "done")]))
    assert result.applied == [True] and [e.seq for e in result.events] == [1]
    rec = await upgraded.get_execution("OLD")
    assert rec is not None and rec.status == "completed"
    await upgraded.aclose()


async def test_a_new_execution_that_exists_is_refused_whole(postgres_factory: Any) -> None:
    storage = await postgres_factory()
    assert isinstance(storage, PostgresStorage)
    storage.commit_function = True
    await storage.commit(Batch(executions=[_execution("A")]))
    for batch in (
        Batch(executions=[_execution("A")], updates=[ExecutionUpdate("A", {"status": "running"})], state={"k": 1}),
        Batch(executions=[_execution("A")], fences={"B": 0}, state={"k": 1}),
    ):
        with pytest.raises(ValueError, match="already exists"):
            await storage.commit(batch)
    assert await storage.get_state(["k"]) == {}


async def test_large_batches_through_the_function(postgres_factory: Any) -> None:
    """Past `commit_function_max_rows` batches take the Python path; raised, the
    function commits them too (no limit of its own)."""
    storage = await postgres_factory()
    assert isinstance(storage, PostgresStorage)
    storage.commit_function, storage.commit_function_max_rows = True, 10_000
    ids = [f"x{i:04}" for i in range(600)]
    await storage.commit(Batch(executions=[_execution(eid, token=1, status="running") for eid in ids]))
    result = await storage.commit(
        Batch(
            updates=[ExecutionUpdate(eid, {"status": "completed"}, token=1, statuses=("running",)) for eid in ids],
            steps=[StepRecord(eid, "s", "s", "run", "completed") for eid in ids],
            events=[EventRecord(eid, "job", "completed") for eid in ids],
            fences={eid: 1 if i % 2 else 0 for i, eid in enumerate(ids)},
        )
    )
    assert result.refused == set(ids[::2])
    assert result.applied == [bool(i % 2) for i in range(600)]
    assert [e.execution_id for e in result.events] == ids[1::2]
    done = {r.id for r in await storage.query(ExecutionQuery(statuses=["completed"]))}
    assert done == set(ids[1::2])
