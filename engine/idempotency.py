"""Idempotency keys: a second start of a job with the same key, within the job's
`idempotency_ttl`, returns the first execution and starts nothing.

A key lives in the storage state as `idem:<job>:<key>` -> `{"execution", "expires"}`.
The start that takes it writes that state and inserts its execution in one
compare-and-set transaction (`Batch.expect`), so among processes sharing the
storage exactly one start wins, on every adapter; the others read the winner's
execution. A key past its expiry (or whose execution retention deleted) is
taken over the same way. Expired keys are deleted by `sweep_expired`, which the
housekeeping loop runs, so the state does not grow with every key ever used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .ids import now_ms
from .storage.base import Batch, CommitResult, ExecutionRecord, Storage

PREFIX = "idem:"
_TRIES = 50
Create = Callable[[ExecutionRecord, Batch], Awaitable[CommitResult]]


def check_key(key: object) -> str | None:
    """The call site's `idempotency_key`: None, or a non-empty string."""
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise ValueError(f"idempotency_key: expected a non-empty string, got {key!r}")
    return key


def state_key(job_name: str, key: str) -> str:
    return f"{PREFIX}{job_name}:{key}"


async def holder(storage: Storage, job_name: str, key: str) -> tuple[Any, ExecutionRecord | None]:
    """The key's stored state, and the execution that holds it while unexpired."""
    skey = state_key(job_name, key)
    state = (await storage.get_state([skey])).get(skey)
    if state is None or int(state.get("expires", 0)) <= now_ms():
        return state, None
    return state, await storage.get_execution(str(state["execution"]))


def take(batch: Batch, rec: ExecutionRecord, key: str, state: Any, ttl_ms: int) -> Batch:
    """Add to `batch` the compare-and-set that gives `key` to `rec` (the state read was `state`)."""
    skey = state_key(rec.job_name, key)
    rec.idempotency_key = key
    batch.state[skey] = {"execution": rec.id, "expires": now_ms() + ttl_ms}
    batch.expect[skey] = state
    return batch


async def start_once(
    storage: Storage, rec: ExecutionRecord, key: str, ttl_ms: int, create: Create
) -> tuple[ExecutionRecord, bool]:
    """Start `rec` unless `key` is held: (the execution that answers, whether it is `rec`)."""
    for _ in range(_TRIES):
        state, first = await holder(storage, rec.job_name, key)
        if first is not None:
            return first, False
        result = await create(rec, take(Batch(), rec, key, state, ttl_ms))
        if not result.conflict:
            return rec, True
    raise RuntimeError(f"idempotency key {key!r} of job {rec.job_name!r} kept changing; nothing started")


async def sweep_expired(storage: Storage, commit: Callable[[Batch], Awaitable[CommitResult]]) -> int:
    """Delete the expired keys (each only if unchanged since read). Returns how many."""
    now = now_ms()
    removed = 0
    for skey, state in (await storage.list_state(PREFIX)).items():
        if isinstance(state, dict) and int(state.get("expires", 0)) <= now:
            result = await commit(Batch(state={skey: None}, expect={skey: state}))
            removed += 0 if result.conflict else 1
    return removed
