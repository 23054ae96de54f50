"""The seam between deciding and executing: what the executor asks of the state owner.

The **executor** runs handler code: one attempt of an execution with its replay
context (`context.ExecutionContext`), its steps (steps.py, threads.py, waits.py)
and its timeouts (attempt.py). The **state owner** (`runtime.Runtime`) decides and
records: claims, leases, commits, flow control, wake-ups, hooks, endings. The
executor reaches the owner only through `StateOwner` below, never through the
whole Runtime.

Designed for an owner in another process (an HTTP worker's orchestration node):
every argument other than `ctx` is plain data (dataclasses of JSON values,
`Holder`s, `Transition`s, `Limit`s), and `ctx` is only read for the execution's
`holder` (id, job, fencing token) and written for its `control`, which a remote
client keeps on its side. A local owner is a Runtime: both sides in one process,
no serialisation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .event_schema import EventKind
from .storage.base import Batch, CommitResult, EventRecord, ExecutionRecord, StepRecord
from .transitions import SuspendStatus, Transition

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .events import Hooks
    from .job import Job
    from .limits import Limit

T = TypeVar("T")


class StateOwner(Protocol):
    # -- who and when ----------------------------------------------------------------------
    #: Sleeps longer than this release the execution (a durable wake-up) instead of waiting.
    short_sleep_ms: int
    #: How often the executor polls for what the owner cannot push (waits).
    poll_s: float
    #: This process's id, written to `start` events.
    worker_id: str

    #: (job) -> the fingerprint of the job's source this process runs, written to
    #: `start` events (its text stored once per version, `sources.SourceVersions`).
    #: An attribute, not a method: a local owner hands over its collaborator's own.
    source_fingerprint: Callable[[Job], str | None]

    # -- writes of a held execution --------------------------------------------------------
    def send(self, ctx: ExecutionContext, type: EventKind, data: dict[str, Any]) -> None:
        """Append an informational event, fenced, without waiting for it."""

    #: (batch) -> None: queue a fenced batch without waiting; it commits before
    #: anything committed after it. An attribute, as `source_fingerprint`.
    record: Callable[[Batch], None]

    def record_step(self, ctx: ExecutionContext, step: StepRecord, event: EventRecord) -> None:
        """`record(transitions.step_done(ctx.holder, step, event))`: a step's record and
        its event, fenced, queued without waiting (an owner may spare the Batch)."""

    async def commit_step(self, ctx: ExecutionContext, step: StepRecord, event: EventRecord) -> CommitResult:
        """`commit_for(ctx, transitions.step_done(ctx.holder, step, event))`, as `record_step`."""

    async def commit_for(self, ctx: ExecutionContext, batch: Batch) -> CommitResult:
        """Commit the held execution's writes; raises Interrupt('lost') when its token is
        stale, Interrupt('unavailable') when storage cannot be reached; picks up a
        pause or cancel request (`ctx.control`)."""

    async def guard(self, ctx: ExecutionContext, call: Awaitable[T]) -> T:
        """Await one of the owner's own calls for `ctx`, storage failures mapped as in `commit_for`."""

    async def suspend(
        self,
        ctx: ExecutionContext,
        status: SuspendStatus,
        *,
        wait_reason: str,
        run_at: int | None = None,
        event: tuple[EventKind, dict[str, Any]] | None = None,
        extra: Batch | None = None,
    ) -> bool:
        """Let the execution go into `status` (waiting until `run_at`, paused, pending);
        False when it was lost meanwhile."""

    async def end(
        self,
        ctx: ExecutionContext,
        change: Transition,
        typed_input: Any,
        *,
        error: BaseException | None = None,
        reason: str | None = None,
    ) -> None:
        """Commit an ending (`transitions.complete/fail/cancel_running/retry`) and do what
        follows it: downstream triggers, cancelling children, hooks, waking waiters."""

    # -- children and other executions -----------------------------------------------------
    def check_registered(self, job: Job) -> None:
        """Raise JobError unless `job` is one of this queue's."""

    def new_record(self, job: Job, input: Any, parent: ExecutionContext | None = None) -> ExecutionRecord:
        """A new pending execution of `job` (input validated here: bad input raises)."""

    async def create(self, job: Job, rec: ExecutionRecord, extra: Batch | None = None) -> CommitResult:
        """Store `rec` (with `extra` in the same transaction) and have it run."""

    async def wait_terminal(self, execution_id: str) -> ExecutionRecord:
        """The execution's record once it ended, here or in another process."""

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """A stored execution (a child started by a step, on replay)."""

    async def cancel(self, execution_id: str, reason: str | None = None) -> bool:
        """Cancel an execution and its unfinished children (lifecycle.cancel)."""

    async def idempotency_holder(self, job_name: str, key: str) -> tuple[Any, ExecutionRecord | None]:
        """The stored state of `job_name`'s idempotency `key` (for the compare-and-set
        that takes it) and the execution holding it while unexpired."""

    # -- flow control, hooks, wake-ups -------------------------------------------------------
    async def acquire_slot(self, limit: Limit, holder: str, priority: int) -> None:
        """Wait for one of `limit`'s slots for `holder` (a step's `concurrency`) and take it:
        woken when a slot is given back (here or in another process), waiters admitted by
        `priority`, then first come first served."""

    async def give_back_slot(self, limit: Limit, holder: str) -> None:
        """Give back the slot `holder` took."""

    def give_back_slot_nowait(self, limit: Limit, holder: str) -> None:
        """Give back the slot `holder` took without waiting for its write: queued now, it
        commits with (or before) the next commit queued after it."""

    #: The job's hooks and listeners (`wanted`, `any_for`, `fire`): the owner runs them.
    hooks: Hooks

    def kick(self) -> None:
        """Something became due: look for work now."""
