"""The storage contract: every adapter in STORAGE_KINDS must pass all of it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dq.engine.storage.base import (
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
    PipeMessage,
    StepRecord,
    Storage,
    TimeBuckets,
)
from dq.engine.storage.query import matches, sort_and_page

StorageFactory = Callable[[], Awaitable[Storage]]  # see conftest.py


def execution(id: str, **fields: Any) -> ExecutionRecord:
    fields.setdefault("job_name", "job")
    fields.setdefault("status", "pending")
    return ExecutionRecord(id=id, **fields)


def event(execution_id: str | None, type: str = "log", **data: Any) -> EventRecord:
    return EventRecord(execution_id=execution_id, job_name="job", type=type, data=data, at=7)


async def insert(storage: Storage, *records: ExecutionRecord) -> None:
    await storage.commit(Batch(executions=list(records)))


async def get(storage: Storage, execution_id: str) -> ExecutionRecord:
    rec = await storage.get_execution(execution_id)
    assert rec is not None, execution_id
    return rec


# --- executions ----------------------------------------------------------------


async def test_create_and_get_round_trips_every_field(storage: Storage) -> None:
    rec = ExecutionRecord(
        id="E1",
        job_name="transcode",
        status="waiting",
        input={"path": "a.mp3", "n": [1, 2.5, None, True], "ü": "ß"},
        output=[{"nested": {"deep": "value"}}],
        error={"type": "builtins.ValueError", "message": "bad", "traceback": "..."},
        retry_count=2,
        parent_id="P1",
        root_id="R1",
        priority=5,
        created_at=1_700_000_000_000,
        run_at=1_700_000_000_500,
        started_at=1_700_000_000_600,
        completed_at=1_700_000_000_700,
        worker_id="w",
        lease_until=1_700_000_001_000,
        token=3,
        control="pause",
        wait_reason="sleep",
        current_step="step#2",
        idempotency_key="order-7",
        replay_of="E0",
    )
    await insert(storage, rec)
    assert await storage.get_execution("E1") == rec
    assert await storage.get_execution("missing") is None


async def test_json_values_of_any_shape_round_trip(storage: Storage) -> None:
    values: list[Any] = [None, 0, "text", 1.5, [], {}, [1, "a"], {"a": {"b": [None]}}]
    await insert(storage, *(execution(f"E{i}", input=v) for i, v in enumerate(values)))
    assert [(await get(storage, f"E{i}")).input for i in range(len(values))] == values


# Non-ASCII, quotes, backslashes, control characters and a line separator: PostgreSQL's
# multi-row statements carry every text as an element of one JSON parameter.
_ODD_TEXT = 'é ß 中文 😀 "q" \\ back\\slash \t\n \u2028 \x01 /'


async def test_odd_text_round_trips_through_every_multi_row_write(storage: Storage) -> None:
    t = _ODD_TEXT
    # New executions only (PostgreSQL: the one-statement insert), two rows and their events.
    await storage.commit(Batch(
        executions=[execution("E1" + t, job_name=t, input={t: [t]}, idempotency_key=t), execution("E2", input=t)],
        events=[event("E1" + t, t, text=t), event("E2", "trigger", n=1, ok=True, none=None, odd="\ud800")],
    ))  # fmt: skip
    # Updates, a step, events, a pipe message and state in one fenced transaction.
    upd = ExecutionUpdate("E1" + t, {"status": "completed", "output": {t: t}, "current_step": t, "wait_reason": t})
    step = StepRecord("E1" + t, t, t, "run", "completed", output=[t], error={"message": t}, started_at=1)
    await storage.commit(Batch(
        updates=[upd, ExecutionUpdate("E2", {"output": t, "error": {"message": t}})], steps=[step],
        events=[event("E1" + t, "step", text=t)], messages=[PipeMessage(t, {t: t}, at=3)], state={t: [t]},
        fences={"E1" + t: 0},
    ))  # fmt: skip
    e1, e2 = await get(storage, "E1" + t), await get(storage, "E2")
    assert (e1.job_name, e1.input, e1.idempotency_key, e1.output, e1.current_step, e1.wait_reason) == (
        t, {t: [t]}, t, {t: t}, t, t,
    )  # fmt: skip
    assert (e2.input, e2.output, e2.error) == (t, t, {"message": t})
    assert await storage.get_steps("E1" + t) == [step]
    assert [(e.type, e.data) for e in await storage.read_events()] == [
        (t, {"text": t}), ("trigger", {"n": 1, "ok": True, "none": None, "odd": "\ud800"}), ("step", {"text": t}),
    ]  # fmt: skip
    assert [(m.data, m.at) for m in await storage.read_messages(t)] == [({t: t}, 3)]
    assert await storage.get_state([t]) == {t: [t]}


async def test_existing_id_is_an_error_and_the_batch_is_not_applied(storage: Storage) -> None:
    await insert(storage, execution("E1"))
    batch = Batch(
        executions=[execution("E2"), execution("E1", job_name="other")],
        events=[event("E2")],
        messages=[PipeMessage("p", 1)],
        state={"k": 1},
    )
    with pytest.raises(ValueError, match="E1"):
        await storage.commit(batch)
    assert (await get(storage, "E1")).job_name == "job"
    assert await storage.get_execution("E2") is None
    assert await storage.read_events() == []
    assert await storage.read_messages("p") == []
    assert await storage.get_state(["k"]) == {}


# --- claims and leases -----------------------------------------------------------


async def test_claim_takes_highest_priority_then_earliest_run_at(storage: Storage) -> None:
    now = await storage.now()
    await insert(
        storage,
        execution("A", priority=0, run_at=now - 5000),
        execution("B", priority=1, run_at=now - 1000),
        execution("C", priority=1, run_at=now - 2000),
        execution("D", priority=-1, run_at=now - 9000),
        execution("E", priority=0, run_at=now - 5000),  # same as A: id breaks the tie
    )
    first = await storage.claim("w", limit=3, lease_ms=60_000)
    assert [r.id for r in first] == ["C", "B", "A"]
    rest = await storage.claim("w", limit=10, lease_ms=60_000)
    assert [r.id for r in rest] == ["E", "D"]
    assert await storage.claim("w", limit=10, lease_ms=60_000) == []


async def test_claim_takes_only_due_claimable_executions(storage: Storage) -> None:
    now = await storage.now()
    await insert(
        storage,
        execution("due", run_at=now - 2),
        execution("future", run_at=now + 60_000),
        execution("slept", status="waiting", run_at=now - 1),
        execution("sleeping", status="waiting", run_at=now + 30_000),
        *(execution(s, status=s, run_at=now - 1) for s in ("paused", "running", "completed",
                                                           "failed", "cancelled")),
    )  # fmt: skip
    claimed = await storage.claim("w", limit=10, lease_ms=60_000)
    assert [r.id for r in claimed] == ["due", "slept"]
    assert await storage.next_due() == now + 30_000
    assert (await get(storage, "future")).status == "pending"
    assert (await get(storage, "sleeping")).status == "waiting"
    assert (await get(storage, "paused")).status == "paused"


async def test_claim_limit_zero_claims_nothing(storage: Storage) -> None:
    await insert(storage, execution("A"))
    assert await storage.claim("w", limit=0, lease_ms=1000) == []
    assert (await get(storage, "A")).status == "pending"


async def test_claim_filters_by_job_names_and_exclude_jobs(storage: Storage) -> None:
    await insert(
        storage,
        execution("A", job_name="a"),
        execution("B", job_name="b"),
        execution("C", job_name="c"),
    )
    assert [r.id for r in await storage.claim("w", limit=9, lease_ms=1000, exclude_jobs=["a", "b"])] == ["C"]  # fmt: skip
    assert await storage.claim("w", limit=9, lease_ms=1000, job_names=[]) == []
    got = await storage.claim("w", limit=9, lease_ms=1000, job_names=["a", "b"], exclude_jobs=["a"])
    assert [r.id for r in got] == ["B"]
    assert [r.id for r in await storage.claim("w", limit=9, lease_ms=1000)] == ["A"]


async def test_claim_sets_lease_and_raises_token(storage: Storage) -> None:
    await insert(storage, execution("A", token=4, wait_reason="backoff", current_step="s"))
    before = await storage.now()
    [claimed] = await storage.claim("w1", limit=1, lease_ms=30_000)
    after = await storage.now()
    assert claimed.status == "running"
    assert claimed.worker_id == "w1"
    assert claimed.token == 5
    assert claimed.lease_until is not None
    assert before + 30_000 <= claimed.lease_until <= after + 30_000
    assert claimed.started_at is not None and before <= claimed.started_at <= after
    # Other fields are left as they were.
    assert (claimed.wait_reason, claimed.current_step) == ("backoff", "s")
    assert await get(storage, "A") == claimed


async def test_claim_keeps_an_earlier_started_at(storage: Storage) -> None:
    await insert(storage, execution("A", started_at=123))
    [claimed] = await storage.claim("w", limit=1, lease_ms=1000)
    assert claimed.started_at == 123


async def test_renew_extends_only_the_holders_leases(storage: Storage) -> None:
    await insert(storage, execution("A"), execution("B"), execution("C"))
    await storage.claim("w1", limit=2, lease_ms=1000)  # A, B
    await storage.commit(Batch(updates=[ExecutionUpdate("B", {"control": "cancel"})]))
    assert await storage.renew("w2", ["A", "B"], 60_000) == {}
    assert await storage.renew("w1", ["C", "missing"], 60_000) == {}
    assert await storage.renew("w1", [], 60_000) == {}
    before = await storage.now()
    assert await storage.renew("w1", ["A", "B"], 60_000) == {"A": None, "B": "cancel"}
    lease = (await get(storage, "A")).lease_until
    assert lease is not None and lease >= before + 60_000
    assert (await get(storage, "C")).lease_until is None


async def test_renew_ignores_executions_no_longer_running(storage: Storage) -> None:
    await insert(storage, execution("A"))
    [claimed] = await storage.claim("w1", limit=1, lease_ms=1000)
    await storage.commit(
        Batch(updates=[ExecutionUpdate("A", {"status": "completed"}, token=claimed.token)])
    )
    assert await storage.renew("w1", ["A"], 60_000) == {}


async def test_reclaim_returns_expired_leases_to_pending(storage: Storage) -> None:
    await insert(storage, execution("short", run_at=1), execution("long", run_at=2))
    [short] = await storage.claim("w1", limit=1, lease_ms=1)
    [long] = await storage.claim("w1", limit=1, lease_ms=60_000)
    assert (short.id, long.id) == ("short", "long")
    await asyncio.sleep(0.05)  # let the 1 ms lease expire
    assert await storage.reclaim() == [short.id]
    rec = await get(storage, short.id)
    assert (rec.status, rec.worker_id, rec.lease_until) == ("pending", None, None)
    assert rec.token == short.token + 1
    assert (await get(storage, long.id)).status == "running"
    assert await storage.reclaim() == []
    [again] = await storage.claim("w2", limit=1, lease_ms=60_000)
    assert again.id == short.id and again.token == short.token + 2


async def test_reclaim_takes_back_dead_workers_executions(storage: Storage) -> None:
    await insert(storage, execution("A"), execution("B"), execution("C"))
    await storage.claim("w1", limit=2, lease_ms=60_000)
    await storage.claim("w2", limit=1, lease_ms=60_000)
    assert await storage.reclaim(dead_workers=["w1", "w9"]) == ["A", "B"]
    assert [(await get(storage, i)).status for i in "ABC"] == ["pending", "pending", "running"]
    assert [(await get(storage, i)).token for i in "ABC"] == [2, 2, 1]


# --- commit: fencing and conditional updates ---------------------------------------


async def test_stale_token_writes_are_refused(storage: Storage) -> None:
    await insert(storage, execution("A"), execution("B"))
    [a1] = await storage.claim("w1", limit=1, lease_ms=60_000)
    assert a1.id == "A"
    await storage.reclaim(dead_workers=["w1"])
    [a2] = await storage.claim("w2", limit=1, lease_ms=60_000)
    assert a2.id == "A" and a2.token > a1.token
    [b] = await storage.claim("w2", limit=1, lease_ms=60_000)
    await storage.commit(Batch(updates=[ExecutionUpdate("B", {"control": "pause"})]))

    result = await storage.commit(
        Batch(
            updates=[
                ExecutionUpdate("A", {"status": "completed"}),
                ExecutionUpdate("B", {"current_step": "s1"}, token=b.token),
            ],
            steps=[
                StepRecord("A", "s1", "s1", "run", "completed", output=1),
                StepRecord("B", "s1", "s1", "run", "completed", output=2),
            ],
            events=[event("A", n=1), event("B", n=2), event(None, n=3)],
            fences={"A": a1.token, "B": b.token, "missing": 1},
        )
    )
    assert result.refused == {"A", "missing"}
    assert result.applied == [False, True]
    assert result.controls == {"B": "pause"}
    assert [e.data for e in result.events] == [{"n": 2}, {"n": 3}]
    assert (await get(storage, "A")).status == "running"
    assert (await get(storage, "B")).current_step == "s1"
    assert await storage.get_steps("A") == []
    assert [s.output for s in await storage.get_steps("B")] == [2]
    assert [e.data for e in await storage.read_events()] == [{"n": 2}, {"n": 3}]


async def test_a_batch_of_only_fences_reports_refusals_and_controls(storage: Storage) -> None:
    await insert(storage, execution("A", token=2, control="cancel"), execution("B", token=1))
    result = await storage.commit(Batch(fences={"A": 2, "B": 7}))
    assert result.refused == {"B"}
    assert result.controls == {"A": "cancel"}


async def test_controls_reflect_the_batchs_own_updates(storage: Storage) -> None:
    await insert(storage, execution("A", token=1))
    result = await storage.commit(
        Batch(updates=[ExecutionUpdate("A", {"control": "pause"}, token=1)], fences={"A": 1})
    )
    assert result.applied == [True]
    assert result.controls == {"A": "pause"}


async def test_updates_apply_only_when_their_conditions_hold(storage: Storage) -> None:
    await insert(storage, execution("A", status="running", token=3), execution("B"))
    result = await storage.commit(
        Batch(
            updates=[
                ExecutionUpdate("A", {"status": "waiting"}, token=2),  # stale token
                ExecutionUpdate("A", {"status": "waiting"}, statuses=("pending",)),  # wrong status
                ExecutionUpdate("missing", {"status": "waiting"}),
                ExecutionUpdate(
                    "A",
                    {"status": "waiting", "wait_reason": "sleep"},
                    token=3,
                    statuses=("running", "pending"),
                ),
                # Later updates of a batch see the earlier ones' effects.
                ExecutionUpdate("A", {"control": "pause"}, statuses=("waiting",)),
                ExecutionUpdate("A", {"status": "failed"}, statuses=("running",)),
                ExecutionUpdate("B", {"retry_count": 1}),
                ExecutionUpdate("B", {"retry_count": 2, "priority": 9}),
            ]
        )
    )
    assert result.applied == [False, False, False, True, True, False, True, True]
    a = await get(storage, "A")
    assert (a.status, a.wait_reason, a.control, a.token) == ("waiting", "sleep", "pause", 3)
    b = await get(storage, "B")
    assert (b.retry_count, b.priority) == (2, 9)


async def test_updates_can_raise_the_token_and_later_conditions_see_it(storage: Storage) -> None:
    await insert(storage, execution("A", token=1))
    result = await storage.commit(
        Batch(
            updates=[
                ExecutionUpdate("A", {"token": 2}, token=1),
                ExecutionUpdate("A", {"status": "cancelled"}, token=1),
                ExecutionUpdate("A", {"status": "completed"}, token=2),
            ]
        )
    )
    assert result.applied == [True, False, True]
    assert (await get(storage, "A")).status == "completed"


async def test_update_of_an_execution_created_in_the_same_batch(storage: Storage) -> None:
    result = await storage.commit(
        Batch(
            executions=[execution("A")],
            updates=[ExecutionUpdate("A", {"status": "running", "input": {"x": 1}}, token=0)],
        )
    )
    assert result.applied == [True]
    a = await get(storage, "A")
    assert (a.status, a.input) == ("running", {"x": 1})


async def test_updates_write_json_fields(storage: Storage) -> None:
    await insert(storage, execution("A"))
    error = {"type": "x.Err", "message": "m", "cause": {"type": "y", "message": "n"}}
    await storage.commit(
        Batch(
            updates=[
                ExecutionUpdate(
                    "A",
                    {"status": "failed", "output": {"o": [1]}, "error": error, "completed_at": 9},
                )
            ]
        )
    )
    a = await get(storage, "A")
    assert (a.status, a.output, a.error, a.completed_at) == ("failed", {"o": [1]}, error, 9)
    await storage.commit(Batch(updates=[ExecutionUpdate("A", {"error": None, "output": None})]))
    a = await get(storage, "A")
    assert (a.output, a.error) == (None, None)


# --- steps, events, messages, state -------------------------------------------------


async def test_steps_upsert_by_key_and_come_back_in_seq_order(storage: Storage) -> None:
    await insert(storage, execution("A"), execution("B"))
    await storage.commit(
        Batch(
            steps=[
                StepRecord("A", "b", "b", "run", "running", seq=2, started_at=5, line=10),
                StepRecord("A", "a", "a", "sleep", "completed", seq=1, output={"x": 1}),
                StepRecord("B", "a", "a", "run", "completed", seq=1),
            ]
        )
    )
    await storage.commit(
        Batch(
            steps=[
                StepRecord("A", "b", "b", "run", "failed", attempt=2, seq=2, started_at=5,
                           error={"message": "boom"}, completed_at=8, job_attempt=1, line=10),
                StepRecord("A", "c", "c", "child", "completed", seq=3, output=[None]),
            ]
        )
    )  # fmt: skip
    steps = await storage.get_steps("A")
    assert [s.key for s in steps] == ["a", "b", "c"]
    assert steps[1] == StepRecord(
        "A", "b", "b", "run", "failed", attempt=2, output=None, error={"message": "boom"},
        started_at=5, completed_at=8, job_attempt=1, seq=2, line=10,
    )  # fmt: skip
    assert steps[0].output == {"x": 1} and steps[2].output == [None]
    assert [s.key for s in await storage.get_steps("B")] == ["a"]
    assert await storage.get_steps("missing") == []


async def test_get_steps_many_is_get_steps_of_each(storage: Storage) -> None:
    await insert(storage, execution("A"), execution("B"), execution("C"))
    await storage.commit(
        Batch(
            steps=[
                StepRecord("A", "z", "z", "run", "completed", seq=1, output=1),
                StepRecord("B", "b", "b", "run", "failed", seq=2, error={"message": "boom"}),
                StepRecord("A", "y", "y", "sleep", "running", seq=2, line=3),
                StepRecord("B", "a", "a", "child", "completed", seq=1, output={"id": "x"}, job_attempt=-1),
            ]
        )
    )
    ids = ["B", "missing", "A", "C"]
    many = await storage.get_steps_many(ids)
    assert many == {i: await storage.get_steps(i) for i in ids}
    # Spelled out, so that a wrong get_steps cannot make it pass.
    assert [(s.execution_id, s.key) for s in many["A"]] == [("A", "z"), ("A", "y")]
    assert [s.key for s in many["B"]] == ["a", "b"] and many["B"][0].output == {"id": "x"}
    assert many["C"] == many["missing"] == []
    assert await storage.get_steps_many([]) == {}


async def test_event_seqs_strictly_increase_across_commits(storage: Storage) -> None:
    assert await storage.last_event_seq() == 0
    r1 = await storage.commit(Batch(events=[event("A", n=1), event(None, n=2)]))
    r2 = await storage.commit(Batch(events=[event("B", n=3)]))
    r3 = await storage.commit(Batch(events=[event("A", n=4), event("A", n=5)]))
    seqs = [e.seq for r in (r1, r2, r3) for e in r.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5 and seqs[0] >= 1
    assert await storage.last_event_seq() == seqs[-1]
    stored = await storage.read_events()
    assert stored == [e for r in (r1, r2, r3) for e in r.events]
    assert stored[0] == EventRecord("A", "job", "log", {"n": 1}, 7, seqs[0])
    assert [e.data["n"] for e in await storage.read_events(seqs[1])] == [3, 4, 5]
    assert [e.data["n"] for e in await storage.read_events(seqs[0], limit=2)] == [2, 3]
    assert [e.data["n"] for e in await storage.read_events(execution_id="A")] == [1, 4, 5]
    assert [e.data["n"] for e in await storage.read_events(seqs[0], execution_id="A", limit=1)] == [4]  # fmt: skip
    assert await storage.read_events(seqs[-1]) == []


async def test_pipe_messages_per_pipe_with_increasing_seqs(storage: Storage) -> None:
    assert await storage.last_message_seq("uploads") == 0
    await storage.commit(Batch(messages=[PipeMessage("uploads", {"p": 1}, at=3),
                                         PipeMessage("other", None)]))  # fmt: skip
    await storage.commit(Batch(messages=[PipeMessage("uploads", [2]), PipeMessage("uploads", "3")]))
    uploads = await storage.read_messages("uploads")
    assert [m.data for m in uploads] == [{"p": 1}, [2], "3"]
    assert uploads[0].at == 3 and all(m.pipe == "uploads" for m in uploads)
    seqs = [m.seq for m in uploads]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] >= 1
    assert await storage.last_message_seq("uploads") == seqs[-1]
    assert [m.data for m in await storage.read_messages("uploads", seqs[0])] == [[2], "3"]
    assert [m.data for m in await storage.read_messages("uploads", 0, limit=1)] == [{"p": 1}]
    [other] = await storage.read_messages("other")
    assert other.data is None and other.seq not in seqs
    assert await storage.read_messages("nope") == []


async def test_state_set_get_delete_and_list_by_prefix(storage: Storage) -> None:
    await storage.commit(
        Batch(state={"rate:a": 1, "rate:b": {"w": [1, 2]}, "rate_x": "u", "Rate:c": 3, "x": True})
    )
    assert await storage.get_state(["rate:a", "rate:b", "missing"]) == {
        "rate:a": 1,
        "rate:b": {"w": [1, 2]},
    }
    assert await storage.get_state([]) == {}
    assert await storage.list_state("rate:") == {"rate:a": 1, "rate:b": {"w": [1, 2]}}
    assert await storage.list_state("rate_") == {"rate_x": "u"}  # "_" is no wildcard
    assert await storage.list_state("ra%") == {}
    assert len(await storage.list_state("")) == 5
    await storage.commit(Batch(state={"rate:a": None, "rate:b": 2, "never": None}))
    assert await storage.list_state("rate:") == {"rate:b": 2}


async def test_list_by_prefix_is_exact_at_the_edges_of_its_range(storage: Storage) -> None:
    # SQL reads [prefix, successor) in byte order: keys just past it, ones that sort
    # between in a language collation, and non-ASCII ones are not in the prefix.
    keys = ["slots:k|w|", "slots:k|w|a", "slots:k|w|é", "slots:k|w|\U0001f600", "slots:k|w}", "slots:k|W|a",
            "slots:k|wa", "slots:k|w", "slots:k|w|a|w|b", "slots:k-w|a"]  # fmt: skip
    await storage.commit(Batch(state={k: i for i, k in enumerate(keys)}))
    inside = {k: i for i, k in enumerate(keys) if k.startswith("slots:k|w|")}
    assert await storage.list_state("slots:k|w|") == inside
    assert await storage.list_state("slots:k|w|é") == {"slots:k|w|é": 2}
    assert await storage.list_state("slots:k|w|\U0001f600") == {"slots:k|w|\U0001f600": 3}


async def test_expect_is_a_compare_and_set_on_state(storage: Storage) -> None:
    await storage.commit(Batch(state={"slot": {"n": 1}, "flag": True}))
    await insert(storage, execution("A", token=1))
    ok = await storage.commit(
        Batch(
            expect={"slot": {"n": 1}, "absent": None},
            state={"slot": {"n": 2}, "absent": "now here"},
            events=[event("A", n=1)],
        )
    )
    assert not ok.conflict and [e.data for e in ok.events] == [{"n": 1}]
    assert await storage.get_state(["slot", "absent"]) == {"slot": {"n": 2}, "absent": "now here"}

    # A lost compare-and-set applies nothing at all.
    for expect in ({"slot": {"n": 1}}, {"absent": None}, {"flag": True, "missing": 0}):
        lost = await storage.commit(
            Batch(
                expect=expect,
                executions=[execution("B")],
                updates=[ExecutionUpdate("A", {"status": "running"})],
                steps=[StepRecord("A", "s", "s", "run", "completed")],
                events=[event("A", n=2)],
                messages=[PipeMessage("p", 1)],
                state={"slot": {"n": 3}},
                fences={"A": 1},
            )
        )
        assert lost.conflict, expect
        assert lost.events == [] and lost.applied == [] and lost.controls == {}
    assert await storage.get_execution("B") is None
    assert (await get(storage, "A")).status == "pending"
    assert await storage.get_steps("A") == []
    assert [e.data for e in await storage.read_events()] == [{"n": 1}]
    assert await storage.read_messages("p") == []
    assert await storage.get_state(["slot"]) == {"slot": {"n": 2}}
    # A batch of nothing but expectations reports whether they hold.
    assert not (await storage.commit(Batch(expect={"flag": True}))).conflict
    assert (await storage.commit(Batch(expect={"flag": False}))).conflict


async def test_concurrent_compare_and_sets_lose_no_update(
    storage: Storage, storage_factory: StorageFactory
) -> None:
    """Counters bumped with expect/state from several handles at once: every
    successful bump is counted exactly once, starting from an absent key."""
    handles = [storage, await storage_factory(), await storage_factory()]
    won = 0

    async def bump(s: Storage, times: int) -> None:
        nonlocal won
        for _ in range(times):
            while True:
                current = (await s.get_state(["counter"])).get("counter")
                nxt = 1 if current is None else current + 1
                result = await s.commit(Batch(expect={"counter": current}, state={"counter": nxt}))
                if not result.conflict:
                    won += 1
                    break

    await asyncio.gather(*(bump(s, 15) for s in handles))
    assert won == 45
    assert await storage.get_state(["counter"]) == {"counter": 45}


# --- queries ----------------------------------------------------------------------

_DATASET = [
    # id, job, status, retry, parent, root, created, started, completed
    ("01A", "ingest", "completed", 0, None, "01A", 100, 110, 150),
    ("01B", "ingest", "failed", 3, None, "01B", 200, 210, 260),
    ("01C", "transcode", "running", 1, "01A", "01A", 300, 310, None),
    ("01D", "transcode", "pending", 0, "01A", "01A", 400, None, None),
    ("01E", "notify", "waiting", 2, "01C", "01A", 500, 505, None),
    ("01F", "notify", "cancelled", 0, None, "01F", 600, None, 650),
    ("01G", "ingest", "completed", 5, "01B", "01B", 700, 720, 790),
    ("x-abc", "ingest", "paused", 1, None, "x-abc", 800, 810, None),
]

_QUERIES = [
    ExecutionQuery(),
    ExecutionQuery(statuses=["completed"]),
    ExecutionQuery(statuses=["completed", "failed", "paused"]),
    ExecutionQuery(statuses=[]),
    ExecutionQuery(job_names=["transcode"]),
    ExecutionQuery(job_names=["notify", "ingest"], statuses=["completed", "cancelled"]),
    ExecutionQuery(ids=["01B", "01E", "zzz"]),
    ExecutionQuery(ids=[]),
    ExecutionQuery(id_contains="ab"),  # case-insensitive
    ExecutionQuery(id_contains="01"),
    ExecutionQuery(id_contains=""),
    ExecutionQuery(parent_id="01A"),
    ExecutionQuery(root_id="01A"),
    ExecutionQuery(created_after=300),
    ExecutionQuery(created_before=300),
    ExecutionQuery(created_after=200, created_before=600),
    ExecutionQuery(started_after=310),
    ExecutionQuery(started_before=310),
    ExecutionQuery(completed_after=150),
    ExecutionQuery(completed_before=650),
    ExecutionQuery(completed_after=100, completed_before=790),
    ExecutionQuery(retry_count=0),
    ExecutionQuery(retry_count_less_than=2),
    ExecutionQuery(retry_count_greater_than=1),
    ExecutionQuery(retry_count_greater_than=0, retry_count_less_than=5),
    ExecutionQuery(order="oldest"),
    ExecutionQuery(limit=3),
    ExecutionQuery(limit=3, offset=2),
    ExecutionQuery(offset=6),
    ExecutionQuery(order="oldest", limit=2, offset=1),
    ExecutionQuery(cursor="01D"),
    ExecutionQuery(cursor="01D", order="oldest"),
    ExecutionQuery(cursor="01D", limit=2, job_names=["ingest", "transcode"]),
    ExecutionQuery(limit=0),
    ExecutionQuery(idempotency_key="k1"),
    ExecutionQuery(idempotency_key="k1", job_names=["notify"]),
    ExecutionQuery(idempotency_key="absent"),
]
#: Idempotency keys of some of the dataset's executions (same key, two jobs).
_KEYS = {"01B": "k1", "01F": "k1", "01G": "k2"}


@pytest.fixture
async def dataset(storage: Storage) -> list[ExecutionRecord]:
    recs = [
        execution(i, job_name=j, status=s, retry_count=r, parent_id=p, root_id=root,
                  created_at=c, run_at=c, started_at=st, completed_at=co)
        for i, j, s, r, p, root, c, st, co in _DATASET
    ]  # fmt: skip
    for rec in recs:
        rec.idempotency_key = _KEYS.get(rec.id)
    await insert(storage, *recs)
    return recs


def _expected(recs: list[ExecutionRecord], q: ExecutionQuery) -> list[str]:
    """The reference semantics: engine/storage/query.py."""
    return [r.id for r in sort_and_page([r for r in recs if matches(r, q)], q)]


@pytest.mark.parametrize("query", _QUERIES, ids=[str(i) for i in range(len(_QUERIES))])
async def test_query_matches_the_reference_semantics(
    storage: Storage, dataset: list[ExecutionRecord], query: ExecutionQuery
) -> None:
    found = await storage.query(query)
    assert [r.id for r in found] == _expected(dataset, query)
    by_id = {r.id: r for r in dataset}
    assert all(r == by_id[r.id] for r in found)
    counts: dict[str, int] = {}
    for r in dataset:
        if matches(r, query, paging=False):
            counts[r.status] = counts.get(r.status, 0) + 1
    assert await storage.count(query) == counts


async def test_query_examples(storage: Storage, dataset: list[ExecutionRecord]) -> None:
    """A few answers spelled out, so the reference above cannot be vacuous."""

    async def ids(**kw: Any) -> list[str]:
        return [r.id for r in await storage.query(ExecutionQuery(**kw))]

    assert await ids(limit=3) == ["x-abc", "01G", "01F"]
    assert await ids(order="oldest", limit=2, offset=1) == ["01B", "01C"]
    assert await ids(id_contains="AB") == ["x-abc"]
    assert await ids(started_before=310) == ["01B", "01A"]  # never-started ones excluded
    assert await ids(completed_after=100, completed_before=790) == ["01F", "01B", "01A"]
    assert await ids(retry_count_greater_than=0, retry_count_less_than=5) == [
        "x-abc", "01E", "01C", "01B",
    ]  # fmt: skip
    assert await ids(root_id="01A", statuses=["running", "waiting"]) == ["01E", "01C"]
    assert await ids(cursor="01D") == ["01C", "01B", "01A"]
    assert await ids(cursor="01D", order="oldest", limit=2) == ["01E", "01F"]
    assert await ids(idempotency_key="k1") == ["01F", "01B"]
    assert await storage.count(ExecutionQuery(job_names=["ingest"], limit=1, cursor="01A")) == {
        "completed": 2,
        "failed": 1,
        "paused": 1,
    }


async def test_aggregate_counts_per_job_status_and_window(storage: Storage, dataset: list[ExecutionRecord]) -> None:
    """The charts' query: counts (and run times), no records. Answers spelled out."""
    by_created = await storage.aggregate(ExecutionQuery(), TimeBuckets("created_at", 100, 200, 3), durations=True)
    assert by_created.counts == {
        ("ingest", "completed"): [1, 0, 0],
        ("ingest", "failed"): [1, 0, 0],
        ("transcode", "running"): [0, 1, 0],
        ("transcode", "pending"): [0, 1, 0],
        ("notify", "waiting"): [0, 0, 1],
        ("notify", "cancelled"): [0, 0, 1],
    }  # 01G (700) and x-abc (800) lie past the last window
    assert by_created.durations == {"ingest": [40]}
    settled = ExecutionQuery(statuses=["completed", "failed"], limit=1, cursor="01A")  # paging ignored
    by_completed = await storage.aggregate(settled, TimeBuckets("completed_at", 0, 400, 2))
    assert by_completed.counts == {("ingest", "completed"): [1, 1], ("ingest", "failed"): [1, 0]}
    assert by_completed.durations == {}
    notify = await storage.aggregate(ExecutionQuery(job_names=["notify"]), TimeBuckets("created_at", 0, 1000, 1))
    assert notify.counts == {("notify", "waiting"): [1], ("notify", "cancelled"): [1]}
    empty = await storage.aggregate(ExecutionQuery(), TimeBuckets("created_at", 10_000, 60_000, 5))
    assert empty.counts == {} and empty.durations == {}


async def test_cursor_pagination_walks_every_execution_once(
    storage: Storage, dataset: list[ExecutionRecord]
) -> None:
    for order in ("newest", "oldest"):
        seen: list[str] = []
        cursor = None
        while page := await storage.query(ExecutionQuery(order=order, limit=3, cursor=cursor)):
            seen += [r.id for r in page]
            cursor = page[-1].id
        assert seen == _expected(dataset, ExecutionQuery(order=order))


async def test_next_due_with_job_filters(storage: Storage) -> None:
    assert await storage.next_due() is None
    await insert(
        storage,
        execution("A", job_name="a", run_at=300),
        execution("B", job_name="b", run_at=200),
        execution("C", job_name="c", run_at=100, status="paused"),
        execution("D", job_name="d", run_at=250, status="waiting"),
    )
    assert await storage.next_due() == 200
    assert await storage.next_due(exclude_jobs=["b"]) == 250
    assert await storage.next_due(exclude_jobs=["b", "d"]) == 300
    assert await storage.next_due(job_names=["a"]) == 300
    assert await storage.next_due(job_names=["c"]) is None
    assert await storage.next_due(job_names=["c", "d"]) == 250
    assert await storage.next_due(job_names=["a", "b"], exclude_jobs=["a", "b"]) is None


# --- workers -------------------------------------------------------------------------


async def test_heartbeat_list_and_remove_workers(storage: Storage) -> None:
    assert await storage.list_workers() == []
    before = await storage.now()
    await storage.heartbeat("w1", {"host": "h", "pid": 1})
    await storage.heartbeat("w2", {"url": "http://x"})
    await storage.heartbeat("w1", {"host": "h", "pid": 2, "state": "draining"})
    after = await storage.now()
    workers = sorted(await storage.list_workers(), key=lambda w: w["id"])
    assert [(w["id"], w["info"]) for w in workers] == [
        ("w1", {"host": "h", "pid": 2, "state": "draining"}),
        ("w2", {"url": "http://x"}),
    ]
    assert all(before <= w["last_heartbeat"] <= after for w in workers)
    await storage.remove_worker("w1")
    await storage.remove_worker("missing")
    assert [w["id"] for w in await storage.list_workers()] == ["w2"]


# --- durability and concurrency ------------------------------------------------------


async def test_reopen_keeps_everything(storage: Storage, storage_factory: StorageFactory) -> None:
    if not storage.durable:
        # The documented trade-off: a new memory storage starts empty.
        await insert(storage, execution("A", input={"x": 1}))
        fresh = type(storage)()
        await fresh.open()
        assert await fresh.get_execution("A") is None
        return
    await insert(storage, execution("A", input={"x": 1}))
    [claimed] = await storage.claim("w", limit=1, lease_ms=60_000)
    await storage.commit(
        Batch(
            steps=[StepRecord("A", "s", "s", "run", "completed", output=5)],
            events=[event("A", n=1)],
            messages=[PipeMessage("p", 1)],
            state={"k": [1]},
            fences={"A": claimed.token},
        )
    )
    await storage.heartbeat("w", {"a": 1})
    await storage.aclose()
    await storage.aclose()  # idempotent

    again = await storage_factory()
    assert await again.get_execution("A") == claimed
    assert [s.output for s in await again.get_steps("A")] == [5]
    assert [e.data for e in await again.read_events()] == [{"n": 1}]
    assert [m.data for m in await again.read_messages("p")] == [1]
    assert await again.get_state(["k"]) == {"k": [1]}
    assert [w["id"] for w in await again.list_workers()] == ["w"]
    r = await again.commit(Batch(events=[event("A", n=2)]))
    assert r.events[0].seq > (await again.read_events())[0].seq


async def test_concurrent_claims_never_take_the_same_execution(
    storage: Storage, storage_factory: StorageFactory
) -> None:
    other = await storage_factory()
    now = await storage.now()
    ids = {f"E{i:04d}" for i in range(300)}
    await insert(storage, *(execution(i, run_at=now - 10) for i in sorted(ids)))

    async def drain(s: Storage, worker: str) -> list[str]:
        got: list[str] = []
        while batch := await s.claim(worker, limit=7, lease_ms=60_000):
            got += [r.id for r in batch]
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate([storage, other] * 3)))
    claimed = [i for r in results for i in r]
    assert sorted(claimed) == sorted(ids)  # every one exactly once
    tokens = {r.token for r in await storage.query(ExecutionQuery())}
    assert tokens == {1}


async def test_tailing_reader_never_misses_an_event(
    storage: Storage, storage_factory: StorageFactory
) -> None:
    """Seqs must become visible in order: a reader that follows `after_seq` sees them all."""
    writers = [storage, await storage_factory(), await storage_factory()]
    reader = await storage_factory()
    done = asyncio.Event()

    async def write(s: Storage, w: int) -> None:
        for i in range(25):
            await s.commit(Batch(events=[event(None, w=w, i=i, k=k) for k in range(3)]))

    seen: list[int] = []

    async def tail() -> None:
        while True:
            finished = done.is_set()
            page = await reader.read_events(seen[-1] if seen else 0, limit=50)
            seen.extend(e.seq for e in page)
            if finished and not page:
                return
            await asyncio.sleep(0)

    tailer = asyncio.create_task(tail())
    await asyncio.gather(*(write(s, w) for w, s in enumerate(writers)))
    done.set()
    await tailer
    everything = [e.seq for e in await reader.read_events(limit=10_000)]
    assert len(everything) == 3 * 25 * 3
    assert seen == everything


def test_records_have_the_fields_this_suite_knows() -> None:
    """A field added to a record must be added to the round-trip test above."""
    assert [f.name for f in dataclasses.fields(ExecutionRecord)] == [
        "id", "job_name", "status", "input", "output", "error", "retry_count", "parent_id",
        "root_id", "priority", "created_at", "run_at", "started_at",
        "completed_at", "worker_id", "lease_until", "token", "control", "wait_reason",
        "current_step", "idempotency_key", "replay_of",
    ]  # fmt: skip


# --- retention: deleting executions ---------------------------------------------


async def test_delete_executions_removes_terminal_ones_with_steps_and_events(storage: Storage) -> None:
    await insert(
        storage,
        execution("A", status="completed", job_name="keep"),
        execution("B", status="running"),
        execution("C", status="failed", parent_id="A", root_id="A", job_name="keep"),
        execution("D", status="cancelled"),
    )
    await storage.commit(Batch(
        steps=[StepRecord(eid, "s", "s", "run", "completed") for eid in "ABCD"],
        events=[event(eid) for eid in "ABCDA"] + [event(None, "pipe_send")],
        messages=[PipeMessage("p", 1)],
    ))  # fmt: skip
    gone = await storage.delete_executions(["A", "B", "C", "missing", "A"])
    assert sorted(gone) == ["A", "C"]
    assert await storage.get_execution("A") is None and await storage.get_execution("C") is None
    assert (await get(storage, "B")).status == "running"
    assert await storage.get_steps("A") == [] and len(await storage.get_steps("B")) == 1
    assert await storage.read_events(execution_id="A") == []
    assert [(e.execution_id, e.type) for e in await storage.read_events()] == [
        ("B", "log"), ("D", "log"), (None, "pipe_send"),
    ]  # fmt: skip
    assert [r.id for r in await storage.query(ExecutionQuery(order="oldest"))] == ["B", "D"]
    assert await storage.count(ExecutionQuery()) == {"running": 1, "cancelled": 1}
    assert await storage.count(ExecutionQuery(job_names=["keep"])) == {}
    assert len(await storage.read_messages("p")) == 1
    assert await storage.delete_executions([]) == []
    await insert(storage, execution("A"))  # the id is free again
    assert (await get(storage, "A")).status == "pending"


# --- the input filter (a subset of the input JSON) -------------------------------

_INPUTS: list[tuple[str, Any]] = [
    ("I1", {"user": {"id": 7, "name": "ann"}, "path": "a.mp3", "tags": ["x", "y"]}),
    ("I2", {"user": {"id": 7.0}, "path": "b.mp3", "flag": True}),
    ("I3", {"user": {"id": "7"}, "flag": 1, "tags": ["x"]}),
    ("I4", {"user": 7, "path": None, "meta": {}}),
    ("I5", [{"user": {"id": 7}}]),
    ("I6", None),
    ("I7", {"user": {"id": 8, "deep": {"a": {"b": [1, {"c": 2}]}}}, "flag": False}),
    ("I8", {"we.ird": {"k": "v"}, "ü": "ß"}),
]

_INPUT_QUERIES: list[dict[str, Any]] = [
    {"user": {"id": 7}},
    {"user": {"id": "7"}},
    {"user": {}},
    {"user": 7},
    {"flag": True},
    {"flag": 1},
    {"flag": False},
    {"path": None},
    {"path": "a.mp3", "user": {"name": "ann"}},
    {"tags": ["x"]},
    {"tags": ["x", "y"]},
    {"meta": {}},
    {"user": {"deep": {"a": {"b": [1, {"c": 2}]}}}},
    {"we.ird": {"k": "v"}},
    {"ü": "ß"},
    {"missing": None},
    {},
]


@pytest.mark.parametrize("subset", _INPUT_QUERIES, ids=[str(i) for i in range(len(_INPUT_QUERIES))])
async def test_input_filter_matches_the_reference_semantics(storage: Storage, subset: dict[str, Any]) -> None:
    recs = [execution(i, input=value, job_name="a" if n % 2 else "b") for n, (i, value) in enumerate(_INPUTS)]
    await insert(storage, *recs)
    for q in (ExecutionQuery(input=subset), ExecutionQuery(input=subset, job_names=["a"], limit=2)):
        assert [r.id for r in await storage.query(q)] == _expected(recs, q)
        expected_count = sum(1 for r in recs if matches(r, q, paging=False))
        assert sum((await storage.count(q)).values()) == expected_count


async def test_query_by_replay_of(storage: Storage) -> None:
    await insert(storage, execution("A"), execution("B", replay_of="A"), execution("C", replay_of="B"),
                 execution("D", replay_of="A", status="failed"))  # fmt: skip
    assert [r.id for r in await storage.query(ExecutionQuery(replay_of="A"))] == ["D", "B"]
    assert await storage.count(ExecutionQuery(replay_of="A")) == {"pending": 1, "failed": 1}
    assert [r.id for r in await storage.query(ExecutionQuery(replay_of="B"))] == ["C"]


async def test_input_filter_examples(storage: Storage) -> None:
    """Answers spelled out by hand: the reference above cannot pass vacuously."""
    await insert(storage, *(execution(i, input=value) for i, value in _INPUTS))

    async def ids(subset: dict[str, Any]) -> list[str]:
        return sorted(r.id for r in await storage.query(ExecutionQuery(input=subset)))

    assert await ids({"user": {"id": 7}}) == ["I1", "I2"]  # 7 == 7.0; "7" and a list are not
    assert await ids({"user": {"id": "7"}}) == ["I3"]
    assert await ids({"flag": True}) == ["I2"]  # true is not 1
    assert await ids({"flag": 1}) == ["I3"]
    assert await ids({"path": None}) == ["I4"]  # null is a value; a missing key is not
    assert await ids({"tags": ["x"]}) == ["I3"]  # lists compare whole, not by containment
    assert await ids({"user": {}}) == ["I1", "I2", "I3", "I7"]
    assert await ids({"we.ird": {"k": "v"}}) == ["I8"]
    assert await ids({}) == ["I1", "I2", "I3", "I4", "I7", "I8"]  # every object input
    assert await storage.count(ExecutionQuery(input={"user": {"id": 7}}, statuses=["pending"])) == {"pending": 2}
