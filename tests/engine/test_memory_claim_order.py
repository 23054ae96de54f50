"""The memory adapter claims in the documented order (priority, then due time, then
id) from its index, also after due times and priorities change while claimable,
with a paused job's executions left in line; `next_due` agrees with a look at
every record."""

from __future__ import annotations

import random

from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import Batch, ExecutionRecord, ExecutionUpdate
from dq.engine.storage.memory import MemoryStorage

LATER = now_ms() + 10**9  # not due during the test


def _run_at(rnd: random.Random) -> int:
    return LATER + rnd.randrange(1000) if rnd.random() < 0.3 else rnd.randrange(1000)


def _expected(recs: dict[str, ExecutionRecord], limit: int, paused: set[str]) -> list[str]:
    due = [r for r in recs.values() if r.status == "pending" and r.run_at < LATER and r.job_name not in paused]
    due.sort(key=lambda r: (-r.priority, r.run_at, r.id))
    return [r.id for r in due[:limit]]


async def test_claim_order_and_next_due_follow_every_change() -> None:
    rnd = random.Random(7)
    storage = MemoryStorage()
    mine: dict[str, ExecutionRecord] = {}
    for _ in range(300):
        rec = ExecutionRecord(
            id=new_id(), job_name=rnd.choice("ab"), status="pending", input=None,
            priority=rnd.choice((0, 0, 5, -3)), created_at=1, run_at=_run_at(rnd),
        )  # fmt: skip
        mine[rec.id] = rec
        storage.commit_now(Batch(executions=[ExecutionRecord(**{k: getattr(rec, k) for k in ExecutionRecord.__slots__})]))
    claimed = 0
    for round_no in range(60):
        # Due times and priorities of waiting records change (e.g. a grant makes one due now).
        for rec in rnd.sample([r for r in mine.values() if r.status == "pending"], 5):
            fields = {"run_at": _run_at(rnd)} if rnd.random() < 0.7 else {"priority": rnd.choice((0, 5, 9))}
            storage.commit_now(Batch(updates=[ExecutionUpdate(rec.id, fields, statuses=("pending",))]))
            for name, value in fields.items():
                setattr(rec, name, value)
        paused = {"b"} if round_no % 3 == 0 else set()
        waiting = [r.run_at for r in mine.values() if r.status == "pending" and r.job_name not in paused]
        assert await storage.next_due(None, sorted(paused)) == (min(waiting) if waiting else None)
        want = _expected(mine, 4, paused)
        got = [r.id for r in await storage.claim("w", limit=4, lease_ms=1000, exclude_jobs=sorted(paused))]
        assert got == want, round_no
        for eid in got:
            mine[eid].status = "running"
        claimed += len(got)
    assert claimed > 100
