"""The SQL adapters store a commit's events of one execution in one row
(`sql_events.py`): every event still has its own seq, one after the other, and
`read_events` / `last_event_seq` answer exactly as with one row per event, from
any `after_seq` and with any `limit`, on a database that also holds rows of one
event (older rows, PostgreSQL's commit function) and after migration 11."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from dq.engine.storage import sql_events
from dq.engine.storage.base import Batch, EventRecord, ExecutionRecord, Storage
from dq.engine.storage.sql import SqlStorage
from dq.engine.storage.sql_tables import EVENTS, SCHEMA_VERSION

Fresh = Callable[[], SqlStorage]  # the `fresh` fixture (conftest.py)


def _ev(eid: str | None, n: int) -> EventRecord:
    return EventRecord(eid, None if eid is None else "job", "log", {"n": n, "text": f"é{n}"}, 1000 + n)


def _key(ev: EventRecord) -> tuple[Any, ...]:
    return (ev.seq, ev.execution_id, ev.job_name, str(ev.type), ev.data, ev.at)


async def _rows(storage: SqlStorage) -> int:
    async with storage.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(EVENTS))).scalar() or 0)


async def _executions(storage: Storage, ids: list[str]) -> None:
    await storage.commit(Batch(executions=[ExecutionRecord(id=i, job_name="job", status="running", token=1) for i in ids]))


#: PostgreSQL's two commit paths: its function (`dq_commit_v2`: batches of up to 32
#: updates and fences) and the Python one (larger group commits). SQLite has one
#: path: its two runs are the same.
PATHS = pytest.mark.parametrize("function", [False, True], ids=["python", "function"])


def _path(storage: SqlStorage, function: bool) -> SqlStorage:
    if hasattr(storage, "commit_function"):
        storage.commit_function = function
    return storage


async def _opened(fresh: Fresh, function: bool, ids: list[str]) -> tuple[SqlStorage, int]:
    """A storage on that path, open, with executions `ids` (token 1), and its last seq."""
    storage = _path(fresh(), function)
    await storage.open()
    await _executions(storage, ids)
    return storage, await storage.last_event_seq()


@PATHS
async def test_consecutive_events_of_one_execution_share_a_row_and_keep_their_seqs(fresh: Fresh, function: bool) -> None:
    storage, before = await _opened(fresh, function, ["A", "B"])
    events = [_ev("A", 1), _ev("A", 2), _ev("A", 3), _ev("B", 1), _ev(None, 1), _ev("B", 2), _ev("B", 3), _ev("A", 4)]
    result = await storage.commit(Batch(events=events, fences={"A": 1, "B": 1}))
    assert [(e.execution_id, e.data["n"]) for e in result.events] == [(e.execution_id, e.data["n"]) for e in events]
    assert [e.seq for e in result.events] == list(range(before + 1, before + 9))  # one seq per event, none skipped
    assert [_key(e) for e in await storage.read_events(before)] == [_key(e) for e in result.events]
    assert await storage.last_event_seq() == before + 8
    assert await _rows(storage) == 5  # A 1-3, B 1, the lone one, B 2-3, A 4
    await storage.aclose()


@PATHS
async def test_any_data_a_bundled_event_carries_reads_back_equal(fresh: Fresh, function: bool) -> None:
    """The events after a row's first are encoded together (`more`): nested values, a
    lone surrogate (which msgspec refuses) and non-ASCII text come back as they were
    written."""
    storage, before = await _opened(fresh, function, ["A"])
    datas: list[Any] = [{"n": 1}, {"nested": {"a": [1, 2.5, None]}}, {"text": "\ud800 lone"}, {"ü": "日本"}, {"n": 5}]
    events = [EventRecord("A", "job", "log", d, 10 + i) for i, d in enumerate(datas)]
    await storage.commit(Batch(events=events, fences={"A": 1}))
    read = await storage.read_events(before)
    assert [e.data for e in read] == datas
    assert [e.at for e in read] == [10, 11, 12, 13, 14]
    assert await _rows(storage) == 1
    flat = [{"n": 1}, {"text": "\udfff"}, {"n": 3}]  # flat data msgspec refuses: `dumps` writes it
    done = await storage.commit(Batch(events=[EventRecord("A", "job", "log", d, 1) for d in flat], fences={"A": 1}))
    assert [e.data for e in await storage.read_events(done.events[0].seq - 1)] == flat
    await storage.aclose()


@PATHS
async def test_a_refused_executions_rows_are_left_out_and_the_rest_numbered_densely(fresh: Fresh, function: bool) -> None:
    storage, before = await _opened(fresh, function, ["A", "B"])
    batch = Batch(events=[_ev("A", 1), _ev("A", 2), _ev("B", 1), _ev("B", 2), _ev("A", 3)], fences={"A": 1, "B": 7})
    result = await storage.commit(batch)
    assert result.refused == {"B"}
    assert [(e.data["n"], e.seq) for e in result.events] == [(1, before + 1), (2, before + 2), (3, before + 3)]
    assert [_key(e) for e in await storage.read_events(before)] == [_key(e) for e in result.events]
    assert await storage.last_event_seq() == before + 3
    await storage.aclose()


@PATHS
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    commits=st.lists(
        st.lists(st.sampled_from(["A", "B", "C", None]), min_size=1, max_size=2 * sql_events.MAX_BUNDLE + 3),
        min_size=1, max_size=4,
    ),
    limit=st.integers(min_value=1, max_value=7),
)  # fmt: skip
async def test_reading_from_any_seq_with_any_limit_gives_every_event_once_in_order(
    fresh: Fresh, function: bool, commits: list[list[str | None]], limit: int
) -> None:
    storage = _path(fresh(), function)
    await storage.open()
    try:
        async with storage.engine.begin() as conn:  # each example starts on an empty log
            await conn.execute(EVENTS.delete())
            await conn.execute(text("DELETE FROM executions"))
        await _executions(storage, ["A", "B", "C"])
        written: list[EventRecord] = []
        for i, owners in enumerate(commits):
            events = [_ev(o, 100 * i + j) for j, o in enumerate(owners)]
            written += (await storage.commit(Batch(events=events))).events
        start = written[0].seq - 1  # PostgreSQL's counter goes on past the emptied log
        assert [e.seq for e in written] == list(range(start + 1, start + 1 + len(written)))
        expected = [_key(e) for e in written]
        assert await storage.last_event_seq() == written[-1].seq
        # From every seq, paging by `limit`: each event once, in seq order.
        for after in range(start, written[-1].seq + 1):
            got: list[tuple[Any, ...]] = []
            cursor = after
            while page := await storage.read_events(cursor, limit=limit):
                assert len(page) <= limit
                got += [_key(e) for e in page]
                cursor = page[-1].seq
            assert got == [k for k in expected if k[0] > after]
        for owner in ("A", "B", "C"):
            mine = [k for k in expected if k[1] == owner]
            got = [_key(e) for e in await storage.read_events(start, limit=1000, execution_id=owner)]
            assert got == mine
    finally:
        await storage.aclose()


@PATHS
async def test_migration_11_adds_the_columns_to_an_older_events_table(fresh: Fresh, function: bool) -> None:
    storage = fresh()
    await storage.open()
    await _executions(storage, ["A"])
    async with storage.engine.begin() as conn:  # the events table as migrations 1-10 left it
        await conn.execute(text("ALTER TABLE events DROP COLUMN upto"))
        await conn.execute(text("ALTER TABLE events DROP COLUMN more"))
        await conn.execute(SCHEMA_VERSION.delete().where(SCHEMA_VERSION.c.version == 11))
        await conn.execute(
            EVENTS.insert().values(seq=1, execution_id="A", job_name="job", type="log", data='{"n": 0}', at=1)
        )
        await conn.execute(text("UPDATE seq_counters SET events = 1"))  # PostgreSQL's numbering (SQLite reads max)
    await storage.aclose()
    upgraded = _path(fresh(), function)
    await upgraded.open()
    result = await upgraded.commit(Batch(events=[_ev("A", 1), _ev("A", 2)], fences={"A": 1}))
    assert [e.seq for e in result.events] == [2, 3]
    assert [(e.seq, e.data["n"]) for e in await upgraded.read_events(0)] == [(1, 0), (2, 1), (3, 2)]
    assert await _rows(upgraded) == 2
    await upgraded.aclose()
