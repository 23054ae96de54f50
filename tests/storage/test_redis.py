"""Redis-only behaviour of RedisStorage: server configuration, flush detection,
server-clock leases, pub/sub wakeups, concurrent claims and atomic commits.

Each test works under a random key prefix and deletes its keys afterwards, so
it can share the server with other suites; the flush test uses db 15 alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from dq.engine.errors import DqError
from dq.engine.storage.base import (
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
    PipeMessage,
    StepRecord,
)
from dq.engine.storage.memory import MemoryStorage
from dq.engine.storage.redis import RedisConfigError, RedisStorage, StorageLostError
from tests.storage.conftest import delete_redis_prefix

REDIS_URL = os.environ.get("DQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: A database this file flushes: nothing else may live there.
FLUSH_DB_URL = os.environ.get("DQ_TEST_REDIS_FLUSH_URL", "redis://127.0.0.1:6379/15")

Make = Callable[[], Awaitable[RedisStorage]]


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = "dqtest" + secrets.token_hex(6)
    yield name
    await delete_redis_prefix(name, REDIS_URL)


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Make]:
    """Opens handles on one store (same URL and prefix); closes them at teardown."""
    opened: list[RedisStorage] = []

    async def open_one() -> RedisStorage:
        storage = RedisStorage(REDIS_URL, prefix=prefix)
        await storage.open()
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        await storage.aclose()


def pending(eid: str, job: str = "job", **fields: object) -> ExecutionRecord:
    rec = ExecutionRecord(id=eid, job_name=job, status="pending", created_at=1, run_at=0)
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


async def server_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- server configuration -------------------------------------------------------


@pytest.mark.serial  # sets the shared server's eviction policy: another open() would refuse
async def test_refuses_an_allkeys_eviction_policy(raw: aioredis.Redis, prefix: str) -> None:
    original = str((await raw.config_get("maxmemory-policy"))["maxmemory-policy"])
    storage = RedisStorage(REDIS_URL, prefix=prefix)
    try:
        await raw.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(RedisConfigError, match=r"allkeys-lru.*noeviction") as info:
            await storage.open()
    finally:
        await raw.config_set("maxmemory-policy", original)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, DqError)
    assert not await raw.exists(f"{prefix}:meta"), "nothing is written before the check"


@pytest.mark.serial  # sets the shared server's eviction policy: another open() would refuse
async def test_accepts_a_volatile_eviction_policy(raw: aioredis.Redis, make: Make) -> None:
    original = str((await raw.config_get("maxmemory-policy"))["maxmemory-policy"])
    try:
        await raw.config_set("maxmemory-policy", "volatile-lru")
        storage = await make()
    finally:
        await raw.config_set("maxmemory-policy", original)
    assert await storage.now() > 0


async def test_warns_and_continues_when_config_is_denied(
    raw: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"{prefix}-user", secrets.token_hex(8)
    await raw.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    url = REDIS_URL.replace("redis://", f"redis://{user}:{password}@", 1)
    storage = RedisStorage(url, prefix=prefix)
    try:
        with caplog.at_level(logging.WARNING, logger="dq.engine.storage.redis"):
            await storage.open()
        assert "maxmemory-policy" in caplog.text
        await storage.commit(Batch(executions=[pending("a")]))
        assert [r.id for r in await storage.claim("w", limit=5, lease_ms=1000)] == ["a"]
    finally:
        await storage.aclose()
        await raw.acl_deluser(user)


# --- flush detection ------------------------------------------------------------


async def test_flushdb_is_reported_not_treated_as_an_empty_queue() -> None:
    admin = aioredis.Redis.from_url(FLUSH_DB_URL, decode_responses=True)
    first = RedisStorage(FLUSH_DB_URL, prefix="dqflush")
    second = RedisStorage(FLUSH_DB_URL, prefix="dqflush")
    try:
        await first.open()
        await first.commit(Batch(executions=[pending("a")]))
        await admin.flushdb()

        with pytest.raises(StorageLostError, match="FLUSHALL/FLUSHDB"):
            await first.claim("w", limit=10, lease_ms=1000)
        with pytest.raises(StorageLostError):
            await first.commit(
                Batch(executions=[pending("b")], events=[EventRecord("b", "job", "x")])
            )
        with pytest.raises(StorageLostError):
            await first.renew("w", ["a"], 1000)
        with pytest.raises(StorageLostError):
            await first.reclaim()
        assert await admin.dbsize() == 0, "a refused commit writes nothing"

        # A new process starts over on the empty store; the old one still refuses.
        await second.open()
        await second.commit(Batch(executions=[pending("c")]))
        with pytest.raises(StorageLostError, match="re-created"):
            await first.claim("w", limit=10, lease_ms=1000)
        assert [r.id for r in await second.claim("w", limit=10, lease_ms=1000)] == ["c"]
    finally:
        await first.aclose()
        await second.aclose()
        await admin.flushdb()
        await admin.aclose()


# --- the server clock -----------------------------------------------------------


async def test_leases_and_heartbeats_use_the_server_clock(
    make: Make, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await make()
    await storage.commit(Batch(executions=[pending("a"), pending("b")]))
    # Skew the client's clock by ten days: nothing may depend on it.
    skew_s = 10 * 86400
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + skew_s)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + skew_s * 10**9)

    before = await server_ms(raw)
    claimed = await storage.claim("w1", limit=1, lease_ms=60_000)
    after = await server_ms(raw)
    assert len(claimed) == 1
    rec = claimed[0]
    assert rec.lease_until is not None and rec.started_at is not None
    assert before + 60_000 <= rec.lease_until <= after + 60_000
    assert before <= rec.started_at <= after
    assert before <= await storage.now() <= await server_ms(raw)

    before = await server_ms(raw)
    assert await storage.renew("w1", [rec.id], 120_000) == {rec.id: None}
    after = await server_ms(raw)
    renewed = await storage.get_execution(rec.id)
    assert renewed is not None and renewed.lease_until is not None
    assert before + 120_000 <= renewed.lease_until <= after + 120_000

    # By the skewed client clock the lease ran out long ago; by the server's it did not.
    assert await storage.reclaim() == []

    await storage.heartbeat("w1", {"host": "h"})
    [worker] = await storage.list_workers()
    assert before <= worker["last_heartbeat"] <= await server_ms(raw)


async def test_an_expired_lease_is_reclaimed(make: Make) -> None:
    storage = await make()
    await storage.commit(Batch(executions=[pending("a")]))
    [rec] = await storage.claim("w1", limit=1, lease_ms=1)
    await asyncio.sleep(0.01)
    assert await storage.reclaim() == ["a"]
    back = await storage.get_execution("a")
    assert back is not None
    assert (back.status, back.worker_id, back.lease_until, back.token) == (
        "pending", None, None, rec.token + 1
    )  # fmt: skip
    assert [r.id for r in await storage.claim("w2", limit=1, lease_ms=1000)] == ["a"]


# --- wakeups --------------------------------------------------------------------


async def wait_for_count(counter: list[int], at_least: int, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while counter[0] < at_least:
        assert asyncio.get_running_loop().time() < deadline, f"only {counter[0]} wakeups"
        await asyncio.sleep(0.005)


async def test_wakeup_reaches_another_instance(make: Make) -> None:
    writer, listener = await make(), await make()
    calls = [0]

    def woke() -> None:
        calls[0] += 1

    listener.on_wakeup(woke)
    await asyncio.wait_for(listener.subscribed.wait(), 5)

    await writer.commit(Batch(executions=[pending("a")]))
    await wait_for_count(calls, 1)
    await writer.commit(Batch(messages=[PipeMessage("uploads", {"path": "a.mp3"})]))
    await wait_for_count(calls, 2)
    [rec] = await writer.claim("w", limit=1, lease_ms=60_000)
    await writer.commit(
        Batch(updates=[ExecutionUpdate("a", {"status": "pending", "run_at": 5}, token=rec.token)])
    )
    await wait_for_count(calls, 3)
    # A slot's write wakes others when it may hand the slot to a step waiting there
    # (a holder `id|key`), not for a job limit's take (its waiters are made due instead).
    await asyncio.sleep(0.2)
    seen = calls[0]
    await writer.commit(Batch(state={"slots:job": {"limit": 1, "holders": ["a"], "n": 0, "v": 1}}))
    await writer.commit(Batch(state={"slots:job|w|b": [0, 1, "b"]}))
    await asyncio.sleep(0.2)
    assert calls[0] == seen
    await writer.commit(Batch(state={"slots:step": {"limit": 1, "holders": ["a|s"], "n": 0, "v": 2}}))
    await wait_for_count(calls, seen + 1)


async def test_wakeup_subscription_survives_a_dropped_connection(
    make: Make, raw: aioredis.Redis, prefix: str
) -> None:
    writer, listener = await make(), await make()
    calls = [0]

    def woke() -> None:
        calls[0] += 1

    listener.on_wakeup(woke)
    await asyncio.wait_for(listener.subscribed.wait(), 5)
    clients = await raw.client_list()
    [conn] = [c for c in clients if c["name"] == f"dq-wakeup-{prefix}"]
    await raw.client_kill_filter(_id=conn["id"])

    # The reconnect fires once (wakeups may have been missed), then pushes flow again.
    await wait_for_count(calls, 1)
    await asyncio.wait_for(listener.subscribed.wait(), 5)
    fired = calls[0]
    await writer.commit(Batch(executions=[pending("a")]))
    await wait_for_count(calls, fired + 1)


async def test_aclose_stops_the_subscription(make: Make, raw: aioredis.Redis, prefix: str) -> None:
    listener = await make()
    listener.on_wakeup(lambda: None)
    await asyncio.wait_for(listener.subscribed.wait(), 5)
    await listener.aclose()
    await listener.aclose()  # idempotent
    names = [c["name"] for c in await raw.client_list()]
    assert f"dq-wakeup-{prefix}" not in names


# --- claims ---------------------------------------------------------------------


async def test_two_instances_claiming_concurrently_never_share(make: Make) -> None:
    a, b = await make(), await make()
    ids = [f"E{i:04d}" for i in range(300)]
    await a.commit(Batch(executions=[pending(i, job=f"job{int(i[1:]) % 3}") for i in ids]))
    taken: list[str] = []

    async def drain(storage: RedisStorage, worker: str) -> None:
        while batch := await storage.claim(worker, limit=7, lease_ms=60_000):
            taken.extend(r.id for r in batch)
            assert all(r.worker_id == worker for r in batch)

    await asyncio.gather(*(drain(s, f"w{n}") for n in range(6) for s in (a, b)))
    assert sorted(taken) == ids


async def test_claim_order_merges_jobs_of_equal_priority(make: Make) -> None:
    storage = await make()
    recs = [
        pending("b1", job="beta", run_at=10), pending("a2", job="alpha", run_at=10),
        pending("a1", job="alpha", run_at=10), pending("b0", job="beta", run_at=5),
        pending("c9", job="gamma", run_at=99, priority=3), pending("z0", job="alpha", run_at=1),
        pending("low", job="beta", run_at=0, priority=-1),
        pending("later", job="alpha", run_at=2**50),
    ]  # fmt: skip
    await storage.commit(Batch(executions=recs))
    assert await storage.next_due() == 0
    assert await storage.next_due(job_names=["gamma", "alpha"]) == 1
    assert await storage.next_due(exclude_jobs=["beta", "gamma"]) == 1
    assert await storage.next_due(job_names=[]) is None
    assert await storage.claim("w", limit=5, lease_ms=1000, job_names=[]) == []
    only_beta = await storage.claim("w", limit=1, lease_ms=1000, job_names=["beta", "nope"])
    assert [r.id for r in only_beta] == ["b0"]
    claimed = await storage.claim("w", limit=10, lease_ms=1000, exclude_jobs=["gamma"])
    assert [r.id for r in claimed] == ["z0", "a1", "a2", "b1", "low"]
    assert [r.id for r in await storage.claim("w", limit=10, lease_ms=1000)] == ["c9"]
    assert await storage.next_due() == 2**50


# --- atomic commits -------------------------------------------------------------


async def test_a_stale_fence_writes_nothing_of_that_execution(make: Make) -> None:
    storage = await make()
    await storage.commit(Batch(executions=[pending("held"), pending("other", job="j2")]))
    [held] = await storage.claim("w", limit=1, lease_ms=60_000, job_names=["job"])
    before = await storage.get_execution("held")

    result = await storage.commit(
        Batch(
            fences={"held": held.token - 1, "other": 0},
            updates=[
                ExecutionUpdate("held", {"status": "completed", "output": 1}),
                ExecutionUpdate("other", {"wait_reason": "concurrency"}, token=0),
            ],
            steps=[
                StepRecord("held", "s1", "s1", "run", "completed", output=1),
                StepRecord("other", "s1", "s1", "run", "completed", output=2),
            ],
            events=[
                EventRecord("held", "job", "step_success"),
                EventRecord(None, None, "global"),
                EventRecord("other", "j2", "step_success"),
            ],
            state={"k": 1},
        )
    )
    assert result.refused == {"held"}
    assert result.applied == [False, True]
    assert result.controls == {"other": None}
    assert [(e.type, e.seq) for e in result.events] == [("global", 1), ("step_success", 2)]

    assert await storage.get_execution("held") == before
    assert await storage.get_steps("held") == []
    assert await storage.read_events(execution_id="held") == []
    assert [s.output for s in await storage.get_steps("other")] == [2]
    assert [e.seq for e in await storage.read_events()] == [1, 2]
    assert await storage.get_state(["k"]) == {"k": 1}
    other = await storage.get_execution("other")
    assert other is not None and other.wait_reason == "concurrency"


async def test_a_duplicate_id_rejects_the_whole_batch(make: Make) -> None:
    storage = await make()
    await storage.commit(Batch(executions=[pending("a")]))
    with pytest.raises(ValueError, match="'a' already exists"):
        await storage.commit(
            Batch(
                executions=[pending("b"), pending("a")],
                events=[EventRecord("b", "job", "trigger")],
                messages=[PipeMessage("p", 1)],
                state={"k": 1},
            )
        )
    assert await storage.get_execution("b") is None
    assert await storage.last_event_seq() == 0
    assert await storage.last_message_seq("p") == 0
    assert await storage.get_state(["k"]) == {}


async def test_values_round_trip_exactly(make: Make) -> None:
    storage = await make()
    value = {
        "empty_list": [], "empty_dict": {}, "nested": [[], {}, [None]], "big": 2**62 + 1,
        "float": 0.1 + 0.2, "text": "é ☃ \U0001f600 \"quoted\" \\ back\nline\r\n\x00", "neg": -(10**20),
    }  # fmt: skip
    await storage.commit(
        Batch(
            executions=[pending("a", input=value, error={"type": "X", "message": "[]"})],
            steps=[StepRecord("a", "k:☃", "n", "run", "completed", output=value, line=7)],
            events=[EventRecord("a", "job", "t", {"v": value}, at=2**45)],
            messages=[PipeMessage("pipe ☃", value, at=3)],
            state={"s:☃*": value, "s:[x]": [], "t": {}},
        )
    )
    rec = await storage.get_execution("a")
    assert rec is not None and rec.input == value and rec.error == {"type": "X", "message": "[]"}
    [step] = await storage.get_steps("a")
    assert (step.key, step.output, step.line) == ("k:☃", value, 7)
    [event] = await storage.read_events(execution_id="a")
    assert (event.data, event.at) == ({"v": value}, 2**45)
    [msg] = await storage.read_messages("pipe ☃")
    assert (msg.data, msg.at, msg.seq) == (value, 3, 1)
    assert await storage.list_state("s:") == {"s:☃*": value, "s:[x]": []}
    assert await storage.list_state("s:[") == {"s:[x]": []}
    assert await storage.get_state(["t", "missing"]) == {"t": {}}


# --- queries match the reference adapter ------------------------------------------


async def test_queries_and_counts_match_the_memory_adapter(make: Make) -> None:
    rng = random.Random(7)
    statuses = ["pending", "running", "waiting", "paused", "completed", "failed", "cancelled"]
    recs = []
    for i in range(180):
        started = rng.choice([None, rng.randrange(1000, 2000)])
        recs.append(
            ExecutionRecord(
                id=f"{rng.randrange(10**6):06d}-{i}", job_name=rng.choice(["a", "b", "c"]),
                status=rng.choice(statuses), retry_count=rng.randrange(4),
                parent_id=rng.choice([None, "p1", "p2"]), root_id=rng.choice([None, "r"]),
                created_at=rng.randrange(1000), run_at=rng.randrange(1000), started_at=started,
                completed_at=None if started is None else started + rng.randrange(500),
            )
        )  # fmt: skip
    redis_storage, memory = await make(), MemoryStorage()
    for storage in (redis_storage, memory):
        await storage.commit(Batch(executions=list(recs)))
    some_id = sorted(r.id for r in recs)[90]
    queries = [
        ExecutionQuery(),
        ExecutionQuery(order="oldest", limit=7, offset=3),
        ExecutionQuery(statuses=["pending", "failed"]),
        ExecutionQuery(statuses=[]),
        ExecutionQuery(job_names=["a"], statuses=["completed"], limit=5),
        ExecutionQuery(job_names=["b", "c"], order="oldest", cursor=some_id),
        ExecutionQuery(job_names=["a"], statuses=[], limit=3),
        ExecutionQuery(ids=[recs[0].id, recs[5].id, "missing"], statuses=[recs[5].status]),
        ExecutionQuery(id_contains="-1", limit=10, offset=2),
        ExecutionQuery(parent_id="p1", root_id="r"),
        ExecutionQuery(created_after=200, created_before=700, order="oldest"),
        ExecutionQuery(started_after=1200, completed_before=1900),
        ExecutionQuery(started_before=1500, job_names=["c"]),
        ExecutionQuery(retry_count=2, statuses=["running", "waiting"]),
        ExecutionQuery(retry_count_less_than=2, retry_count_greater_than=0, limit=4),
        ExecutionQuery(cursor=some_id, limit=10),
        ExecutionQuery(cursor=some_id, limit=10, order="oldest", statuses=["pending"]),
    ]
    for query in queries:
        assert await redis_storage.query(query) == await memory.query(query), query
        assert await redis_storage.count(query) == await memory.count(query), query


# --- time and lineage indexes (schema 2) ------------------------------------------


async def test_time_and_lineage_indexes_follow_every_change(make: Make, raw: aioredis.Redis, prefix: str) -> None:
    """Insert, claim, completion, a cleared time and deletion each keep the zsets and
    sets exact; a query by window or lineage then reads only its own rows."""
    storage = await make()
    await storage.commit(Batch(executions=[
        pending("P", created_at=100),
        pending("C", created_at=200, parent_id="P", root_id="P"),
        pending("R", created_at=300, replay_of="P", status="completed", started_at=310, completed_at=320),
    ]))  # fmt: skip
    assert await raw.zrange(f"{prefix}:at:created", 0, -1, withscores=True) == [("P", 100), ("C", 200), ("R", 300)]
    assert await raw.smembers(f"{prefix}:children:P") == {"C"}
    assert await raw.smembers(f"{prefix}:tree:P") == {"C"}
    assert await raw.smembers(f"{prefix}:replays:P") == {"R"}
    claimed = {r.id: r for r in await storage.claim("w1", limit=5, lease_ms=60_000)}
    assert set(claimed) == {"P", "C"}
    started = dict(await raw.zrange(f"{prefix}:at:started", 0, -1, withscores=True))
    assert started == {"P": claimed["P"].started_at, "C": claimed["C"].started_at, "R": 310}
    await storage.commit(Batch(updates=[
        ExecutionUpdate("P", {"status": "completed", "completed_at": 5_000}),
        ExecutionUpdate("R", {"status": "pending", "started_at": None, "completed_at": None}),
    ]))  # fmt: skip
    assert await raw.zrange(f"{prefix}:at:completed", 0, -1, withscores=True) == [("P", 5_000)]
    assert await raw.zscore(f"{prefix}:at:started", "R") is None

    fetched: list[str] = []
    real_fetch = storage._fetch

    async def counting_fetch(ids: list[str], fields: tuple[str, ...] = ()) -> list[ExecutionRecord]:
        fetched.extend(ids)
        return await real_fetch(ids, fields)

    storage._fetch = counting_fetch  # type: ignore[method-assign]
    assert [r.id for r in await storage.query(ExecutionQuery(completed_after=4_000))] == ["P"]
    assert fetched == ["P"]
    fetched.clear()
    assert [r.id for r in await storage.query(ExecutionQuery(parent_id="P"))] == ["C"]
    assert fetched == ["C"]
    fetched.clear()
    assert await storage.count(ExecutionQuery(started_after=0, root_id="P")) == {"running": 1}
    assert fetched == ["C"]

    assert await storage.delete_executions(["P"]) == ["P"]
    for key in ("at:created", "at:started", "at:completed"):
        assert await raw.zscore(f"{prefix}:{key}", "P") is None
    assert await raw.smembers(f"{prefix}:replays:P") == {"R"}  # R's own link stays while R does
    await storage.commit(Batch(updates=[ExecutionUpdate("C", {"status": "failed", "completed_at": 6_000})]))
    assert await storage.delete_executions(["C"]) == ["C"]
    assert await raw.exists(f"{prefix}:children:P", f"{prefix}:tree:P") == 0


async def test_a_schema_1_prefix_is_indexed_when_opened(make: Make, raw: aioredis.Redis, prefix: str) -> None:
    """Executions written before schema 2 (no time or lineage keys) are found by
    window and lineage after the next open, which records the current schema."""
    first = await make()
    await first.commit(Batch(executions=[
        pending(f"E{i:04}", created_at=1_000 + i, parent_id="E0000" if i else None) for i in range(1_500)
    ]))  # fmt: skip
    await first.aclose()
    extra = [k async for k in raw.scan_iter(match=f"{prefix}:at:*")]
    extra += [k async for k in raw.scan_iter(match=f"{prefix}:children:*")]
    await raw.delete(*extra)
    await raw.hset(f"{prefix}:meta", "schema", 1)

    second = await make()
    assert await raw.hget(f"{prefix}:meta", "schema") == "3"
    assert await raw.zcard(f"{prefix}:at:created") == 1_500
    assert len(await second.query(ExecutionQuery(parent_id="E0000"))) == 1_499
    found = await second.query(ExecutionQuery(created_after=2_400, created_before=2_410))
    assert [r.id for r in found] == [f"E{i:04}" for i in range(1_409, 1_400, -1)]


async def test_a_schema_2_prefix_gets_its_state_keys_indexed_when_opened(
    make: Make, raw: aioredis.Redis, prefix: str
) -> None:
    """State written before schema 3 (no `state-keys` index) is listed by prefix after
    the next open; from then on list_state reads the prefix's range of the index."""
    first = await make()
    await first.commit(Batch(state={f"slots:k|w|{i:04}": [0, i, f"{i:04}"] for i in range(1_500)} | {"cron:x": 1}))
    await first.aclose()
    await raw.delete(f"{prefix}:state-keys")
    await raw.hset(f"{prefix}:meta", "schema", 2)

    second = await make()
    assert await raw.hget(f"{prefix}:meta", "schema") == "3"
    assert await raw.zcard(f"{prefix}:state-keys") == 1_501
    line = await second.list_state("slots:k|w|")
    assert len(line) == 1_500 and line["slots:k|w|0042"] == [0, 42, "0042"]
    assert await second.list_state("cron:") == {"cron:x": 1}
    await second.commit(Batch(state={"slots:k|w|0042": None}))
    assert "slots:k|w|0042" not in await second.list_state("slots:k|w|")
    assert await raw.zscore(f"{prefix}:state-keys", "slots:k|w|0042") is None
