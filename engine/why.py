"""Why an execution is not running: one answer computed from stored state.

Everything comes from storage (the execution, its open step, limit state keys,
pause flags, worker heartbeats), never from this process's memory, so the
answer is as true for an execution owned by another process as for one of
ours. It costs a handful of point reads: the record's steps for a running
execution, one state read per limit, the workers list for a due one.

The job's definition (when this process has it) resolves the execution's
concurrency key exactly as admission does; the stored `wait_reason` tells
which gate sent it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .limits import Limit, resolve_concurrency, resolve_timed
from .serialize import load_typed
from .storage.base import ExecutionQuery, ExecutionRecord, StepRecord, Storage

if TYPE_CHECKING:
    from .queue import Queue

#: The kinds of answer, most specific first.
KINDS = (
    "paused", "job_paused", "concurrency", "throttled", "rate_limited", "debounced", "sleeping",
    "retry_backoff", "child", "pipe", "job", "scheduled", "no_worker", "queued",
)  # fmt: skip


@dataclass(slots=True)
class Holder:
    execution_id: str
    status: str | None
    step: str | None = None  # the step holding a step-level slot


@dataclass(slots=True)
class WaitReason:
    kind: str
    #: One sentence for a person.
    text: str
    #: When it can go on by itself (epoch ms): a wake, a window's end.
    until: int | None = None
    #: The concurrency/throttle/debounce key, and the limit for a concurrency key.
    key: str | None = None
    limit: int | None = None
    holders: list[Holder] = field(default_factory=list)
    #: What it waits for: a child execution's id, a pipe's or a job's name, and the match.
    child_id: str | None = None
    child_status: str | None = None
    target: str | None = None
    match: Any = None
    #: The step it waits in.
    step: str | None = None
    #: The paused parent it is paused with.
    parent_id: str | None = None


async def explain(queue: Queue, rec: ExecutionRecord, now: int) -> WaitReason | None:
    """Why `rec` is not running now (None: it runs, or it ended)."""
    storage: Storage = queue.storage
    job = queue.definitions.get(rec.job_name)
    names = sorted(queue.definitions)
    # The queue-wide limit's key, as FlowControl names it: the queue's job names.
    queue_limit = Limit("queue:" + ",".join(names), queue.concurrency) if queue.concurrency else None
    return await explain_record(
        storage, rec, now, job=job, queue_limit=queue_limit, stale_ms=max(3 * queue.lease_ms, 10_000),
        kept=queue.runtime.flow.ledger.kept,
    )


async def explain_record(
    storage: Storage,
    rec: ExecutionRecord,
    now: int,
    *,
    job: Any = None,
    queue_limit: Limit | None = None,
    stale_ms: int = 30_000,
    kept: Mapping[str, Any] | None = None,
) -> WaitReason | None:
    """`explain` without a queue: `job` is the execution's definition if known,
    `stale_ms` how old a worker's heartbeat may be for it to count as live, `kept`
    the slot keys this process keeps in memory (`slot_keeping.py`), with their state."""
    if rec.status == "running":
        return await _running(storage, rec)
    if rec.status == "paused":
        return await _paused(storage, rec)
    if rec.status not in ("pending", "waiting"):
        return None
    flag = f"job_paused:{rec.job_name}"
    if (await storage.get_state([flag])).get(flag):
        return WaitReason("job_paused", f"Job {rec.job_name!r} is paused: none of its executions start until it is resumed.")
    reason = rec.wait_reason or ""
    until = rec.run_at if rec.run_at > now else None
    if rec.status == "waiting" and reason == "sleep":
        return WaitReason("sleeping", "Sleeping (a durable sleep).", until=rec.run_at, step=rec.current_step)
    if reason == "retry":
        return WaitReason("retry_backoff", f"Attempt {rec.retry_count} failed; attempt {rec.retry_count + 1} starts after the backoff.", until=rec.run_at)
    if reason.startswith("debounced"):
        key = _timed_key(job, rec, "debounce")
        return WaitReason("debounced", f"Debounced: runs once its key has been quiet ({reason[len('debounced'):].strip(' ()')}).", until=rec.run_at, key=key)
    if reason.startswith("throttled"):
        key = _timed_key(job, rec, "throttle")
        return WaitReason("throttled", f"Throttled: {reason.split(':', 1)[-1].strip()}.", until=rec.run_at, key=key)
    if reason.startswith("rate limited"):
        return WaitReason("rate_limited", f"Rate limited: {reason.split(':', 1)[-1].strip()}.", until=until)
    held = await _concurrency(storage, rec, job, queue_limit, slot_reason=reason.startswith(("waiting for a slot", "contended")), kept=kept or {})
    if held is not None:
        return held
    if reason.startswith(("waiting for a slot", "contended")):  # a job this process does not define
        return WaitReason("concurrency", reason[:1].upper() + reason[1:] + ".")
    if until is not None:
        return WaitReason("scheduled", "Scheduled to start later.", until=until)
    if not await _live_workers(storage, stale_ms):
        return WaitReason("no_worker", "No live worker: no process serving this storage has sent a heartbeat recently.")
    return WaitReason("queued", "Ready: waits for a free slot in a worker (all are busy, or one is about to claim it).")


def _typed_input(job: Any, rec: ExecutionRecord) -> Any:
    return load_typed(job.options.input, rec.input)


def _timed_key(job: Any, rec: ExecutionRecord, option: str) -> str | None:
    if job is None:
        return None
    try:
        timed = resolve_timed(job.name, getattr(job.options, option), _typed_input(job, rec), option)
    except Exception:  # the user's fn(input) raised: admission reports that itself
        return None
    return timed.key if timed is not None else None


async def _concurrency(
    storage: Storage, rec: ExecutionRecord, job: Any, queue_limit: Limit | None, *, slot_reason: bool,
    kept: Mapping[str, Any],
) -> WaitReason | None:
    """Held back by a full concurrency key: which key, its limit, and who holds it."""
    limits: list[Limit] = []
    if job is not None and job.options.concurrency is not None:
        try:
            limit = resolve_concurrency(job.name, job.options.concurrency, _typed_input(job, rec))
        except Exception:
            limit = None
        if limit is not None and limit.window_ms is None:
            limits.append(limit)
    if queue_limit is not None:
        limits.append(queue_limit)
    if not limits:
        return None
    state = await storage.get_state(["slots:" + lim.key for lim in limits])
    for lim in limits:
        key = "slots:" + lim.key
        held_here = kept[key] if key in kept else state.get(key)  # kept here: its state is in memory
        raw = [str(h) for h in (held_here or {}).get("holders", [])]
        keepers = sorted({h[1:] for h in raw if h.startswith("@")})
        if keepers:  # kept in another process's memory: its holders are not stored
            return WaitReason(
                "concurrency",
                f"Held by concurrency key {lim.key!r} (limit {lim.limit}), kept in the memory of process "
                f"{', '.join(keepers)}: it was the only process on this storage, and gives the key back within "
                "about a second of seeing another.",
                key=lim.key, limit=lim.limit,
            )  # fmt: skip
        if len(raw) < lim.limit and not slot_reason:
            continue
        holders = await _holders(storage, raw)
        running = [h for h in holders if h.status == "running"]
        if len(running) < lim.limit and not slot_reason:
            continue
        shown = ", ".join(h.execution_id for h in holders) or "none right now"
        return WaitReason(
            "concurrency",
            f"Held by concurrency key {lim.key!r} (limit {lim.limit}); held by {shown}.",
            key=lim.key, limit=lim.limit, holders=holders,
        )  # fmt: skip
    return None


async def _holders(storage: Storage, raw: Sequence[str]) -> list[Holder]:
    ids = sorted({h.split("|", 1)[0] for h in raw})
    found = {r.id: r.status for r in await storage.query(ExecutionQuery(ids=ids, limit=len(ids)))} if ids else {}
    out = []
    for h in raw:
        eid, _, step = h.partition("|")
        out.append(Holder(eid, found.get(eid), step or None))
    return out


async def _live_workers(storage: Storage, stale_ms: int) -> bool:
    clock = await storage.now()  # heartbeats are on the storage clock
    return any(clock - int(w.get("last_heartbeat") or 0) <= stale_ms for w in await storage.list_workers())


def _open_step(steps: Sequence[StepRecord]) -> StepRecord | None:
    open_steps = [s for s in steps if s.status == "running" and s.kind in ("child", "wait")]
    return open_steps[-1] if open_steps else None


async def _running(storage: Storage, rec: ExecutionRecord) -> WaitReason | None:
    """A running execution may still be waiting: on a child, a pipe message or a job."""
    step = _open_step(await storage.get_steps(rec.id))
    if step is None:
        return None
    out: Mapping[str, Any] = step.output if isinstance(step.output, Mapping) else {}
    if step.kind == "child":
        child_id = str(out.get("child_id") or "")
        child = await storage.get_execution(child_id) if child_id else None
        status = child.status if child else None
        return WaitReason("child", f"Waiting for child execution {child_id} of job {step.name!r} ({status or 'unknown'}).",
                          child_id=child_id or None, child_status=status, target=step.name, step=step.key)  # fmt: skip
    if "after_seq" in out:
        return WaitReason("pipe", f"Waiting for a message on pipe {step.name!r}{_matching(out.get('match'))}.",
                          target=step.name, match=out.get("match"), step=step.key)  # fmt: skip
    return WaitReason("job", f"Waiting for an execution of job {step.name!r}{_matching(out.get('match'))} to complete.",
                      target=step.name, match=out.get("match"), step=step.key)  # fmt: skip


def _matching(match: Any) -> str:
    return "" if match in (None, {}) else f" matching {match}"


async def _paused(storage: Storage, rec: ExecutionRecord) -> WaitReason:
    parent = await storage.get_execution(rec.parent_id) if rec.parent_id else None
    if parent is not None and parent.status == "paused":
        return WaitReason("paused", f"Paused with its parent {parent.id}: resume the parent to go on.", parent_id=parent.id)
    return WaitReason("paused", "Paused: it goes on from its last step when resumed.", step=rec.current_step)


def brief(rec: ExecutionRecord, now: int) -> str:
    """A one-line reason from the record alone (no reads): the lists' tooltip.
    The execution page gives the full answer (`explain`)."""
    reason = rec.wait_reason or ""
    later = rec.run_at > now
    at = f" until {_clock(rec.run_at)} UTC" if later else ""
    if rec.status == "paused":
        return "Paused: waits for Resume."
    if rec.status not in ("pending", "waiting"):
        return ""
    if reason == "sleep":
        return f"Sleeping{at}."
    if reason == "retry":
        return f"Waiting to retry (attempt {rec.retry_count + 1}){at}."
    if reason.startswith(("waiting for a slot", "contended")):
        return "Held by a concurrency key: " + reason.split(":", 1)[-1].strip() + "."
    if reason.startswith(("throttled", "debounced", "rate limited")):
        return reason[:1].upper() + reason[1:] + at + "."
    if later:
        return f"Scheduled{at}."
    return "Queued: starts when a worker takes it."


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")
