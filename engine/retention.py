"""Housekeeping: retention of finished executions, and expired idempotency keys.

`create_queue(retention={"completed": "7 days", "failed": "30 days", "cancelled":
"7 days"})` deletes top-level executions of the queue's jobs that ended (in that
status) longer ago than that, each with its whole tree of child executions and
their steps and events. A tree is deleted only once every execution in it has
ended; the root's status and end time decide. Statuses left out of the policy
are kept forever (the default keeps everything).

The sweep runs when the queue starts and then every `interval` (at most a
minute), in every process: a sweep reads a bounded page of candidates at a time
(oldest first) and deletes at most `max_per_sweep` executions, so a large backlog
is worked off over several sweeps without long transactions. Two processes
sweeping at once is harmless: `Storage.delete_executions` deletes what is still
there and terminal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .durations import parse_duration
from .idempotency import sweep_expired
from .ids import now_ms
from .storage.base import TERMINAL, Batch, CommitResult, ExecutionQuery, Storage

STATUSES = ("completed", "failed", "cancelled")
#: Candidates read per query, and executions deleted per storage call.
PAGE = 200
INTERVAL_S = 60.0


def parse_retention(value: Any) -> dict[str, int]:
    """The `retention` option: status -> how long to keep, ms. Checked at create_queue."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"retention: expected a dict like {{'completed': '7 days'}}, got {value!r}")
    unknown = set(value) - set(STATUSES)
    if unknown:
        raise ValueError(f"retention: unknown keys {sorted(unknown)}; expected some of {list(STATUSES)}")
    return {status: parse_duration(value[status], f"retention.{status}") for status in STATUSES if value.get(status) is not None}


class Housekeeping:
    """Runs the retention policy and drops expired idempotency keys."""

    def __init__(
        self,
        storage: Storage,
        policy: dict[str, int],
        job_names: Sequence[str],
        commit: Callable[[Batch], Awaitable[CommitResult]],
        logger: logging.Logger,
        *,
        interval_s: float = INTERVAL_S,
        max_per_sweep: int = 5000,
    ) -> None:
        self.storage = storage
        self.policy = policy
        self.job_names = list(job_names)
        self._commit = commit
        self._logger = logger
        self.interval_s = min(interval_s, INTERVAL_S)
        self.max_per_sweep = max_per_sweep
        #: Executions this process deleted since it started (the dashboard shows it).
        self.removed = 0
        self.last_sweep_at: int | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                self._logger.warning("dq: housekeeping failed (retrying in %.0fs): %s", self.interval_s, exc)
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> int:
        """One pass: delete what the policy expired (bounded); returns how many executions."""
        removed = 0
        now = now_ms()
        for status, keep_ms in self.policy.items():
            removed += await self._expire(status, now - keep_ms, self.max_per_sweep - removed)
        await sweep_expired(self.storage, self._commit)
        self.last_sweep_at = now
        return removed

    async def _expire(self, status: str, cutoff: int, budget: int) -> int:
        removed, cursor = 0, None
        while removed < budget:
            page = await self.storage.query(ExecutionQuery(
                statuses=[status], job_names=self.job_names, completed_before=cutoff,
                order="oldest", limit=PAGE, cursor=cursor,
            ))  # fmt: skip
            if not page:
                break
            cursor = page[-1].id
            doomed: list[str] = []
            for root in page:
                if root.parent_id is not None:
                    continue  # children go with their root's tree
                if removed + len(doomed) >= budget:
                    break
                tree = await self.storage.query(ExecutionQuery(root_id=root.id))
                if all(t.status in TERMINAL for t in tree):
                    doomed += [root.id, *(t.id for t in tree)]
            for start in range(0, len(doomed), PAGE):
                gone = len(await self.storage.delete_executions(doomed[start : start + PAGE]))
                removed += gone
                self.removed += gone
            if len(page) < PAGE:
                break
        return removed
