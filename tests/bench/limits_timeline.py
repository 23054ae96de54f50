"""Where a limited run's wall time goes: a timeline of one run (issue 15).

Runs the bench's no-op 1-step jobs under a limit once, with the engine's hand-over
points wrapped to record when each happens (perf_counter, µs from the first
start): storage transactions (start, end, what they carry), hand-overs decided
by the admission ledger, successors run, their first step's commit queued. Then
prints, per transaction, what it carried and the gap to the one before (time in
which no transaction ran), and a summary: wall time, time inside transactions,
time between them.

    .venv/bin/python tests/bench/limits_timeline.py --storage sqlite:////tmp/t.db [--jobs 100]
        [--job-concurrency 10 | --step-concurrency 10 | --keys 10 | --concurrency 10]
        [--start sequential] [--events]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from dq import create_redis_storage, storage_from_url
from dq.app.bench import Workload, timed_run
from dq.engine import committer as committer_mod
from dq.engine import dispatch, flow, slots
from dq.engine.storage.base import Batch

T0 = time.perf_counter()
LOG: list[tuple[float, str, str]] = []


def mark(kind: str, what: str = "") -> None:
    LOG.append(((time.perf_counter() - T0) * 1e6, kind, what))


def _summary(b: Batch) -> str:
    parts = []
    for name in ("executions", "updates", "steps", "events"):
        n = len(getattr(b, name))
        if n:
            parts.append(f"{n} {name}")
    if b.state:
        parts.append(f"{len(b.state)} state")
    return ", ".join(parts) or "empty"


def instrument(storage: Any) -> None:
    commit = storage.commit

    async def timed_commit(batch: Batch) -> Any:
        mark("txn-start", _summary(batch))
        try:
            return await commit(batch)
        finally:
            mark("txn-end")

    storage.commit = timed_commit

    put = committer_mod._Lane.put

    def put_marked(self: Any, batch: Batch, fut: Any) -> None:
        if batch.steps and any(s.status == "completed" for s in batch.steps):
            mark("queued-step", batch.steps[-1].execution_id[-6:])
        elif batch.state:
            mark("queued-handover", _summary(batch))
        put(self, batch, fut)

    committer_mod._Lane.put = put_marked  # type: ignore[method-assign]

    send = slots.Ledger._send

    def send_marked(self: Any, ops: Any, decisions: Any, batch: Any, changed: Any, before: Any, rnd: Any, *rest: Any) -> None:
        if rnd.granted:
            who = ",".join(op.holder.split("|")[0][-6:] for op in ops)
            mark("handover-decided", f"{len(rnd.granted)} granted by {who} to " + ",".join(h.split("|")[0][-6:] for _, h in rnd.granted))
        send(self, ops, decisions, batch, changed, before, rnd, *rest)

    slots.Ledger._send = send_marked  # type: ignore[method-assign]

    run_admitted = dispatch.Dispatch.run_admitted

    def run_admitted_marked(self: Any, job: Any, rec: Any, history: Any) -> None:
        mark("successor-run", rec.id[-6:])
        run_admitted(self, job, rec, history)

    dispatch.Dispatch.run_admitted = run_admitted_marked  # type: ignore[method-assign]

    claim = storage.claim

    async def claim_marked(*a: Any, **kw: Any) -> Any:
        mark("claim-start")
        out = await claim(*a, **kw)
        mark("claim-end", f"{len(out)} claimed")
        return out

    storage.claim = claim_marked
    _ = flow  # the module whose hand-off these points belong to


def report(show_events: bool) -> None:
    txns: list[tuple[float, float, str]] = []
    start: tuple[float, str] | None = None
    for t, kind, what in LOG:
        if kind == "txn-start":
            start = (t, what)
        elif kind == "txn-end" and start is not None:
            txns.append((start[0], t, start[1]))
            start = None
    if show_events:
        for t, kind, what in LOG:
            print(f"{t:10.0f} µs  {kind:18} {what}")
    print(f"{'start µs':>9} {'in txn':>7} {'gap before':>10}  carries")
    prev_end = None
    gaps = 0.0
    inside = 0.0
    for s, e, what in txns:
        gap = s - prev_end if prev_end is not None else 0.0
        gaps += gap
        inside += e - s
        print(f"{s:9.0f} {e - s:7.0f} {gap:10.0f}  {what}")
        prev_end = e
    if txns:
        wall = txns[-1][1] - txns[0][0]
        print(f"{len(txns)} transactions over {wall:,.0f} µs: {inside:,.0f} µs inside them, {gaps:,.0f} µs between them")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--storage", required=True)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--job-concurrency", type=int, default=None)
    p.add_argument("--step-concurrency", type=int, default=None)
    p.add_argument("--keys", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=None, help="the queue's concurrency")
    p.add_argument("--start", default="gather", choices=["gather", "sequential", "bulk"])
    p.add_argument("--redis-prefix", default="", help="a Redis key prefix of the run's own")
    p.add_argument("--events", action="store_true", help="print every recorded point")
    args = p.parse_args()
    storage = create_redis_storage(args.storage, prefix=args.redis_prefix) if args.redis_prefix else storage_from_url(args.storage)
    instrument(storage)
    w = Workload(args.jobs, 1, args.concurrency, args.job_concurrency, args.step_concurrency, args.keys, args.start)
    elapsed, _ = await timed_run(storage, w)
    print(f"{args.jobs / elapsed:,.0f} jobs/s")
    report(args.events)


if __name__ == "__main__":
    asyncio.run(main())
