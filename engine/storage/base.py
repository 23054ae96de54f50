"""The Storage protocol: the records every adapter stores and the primitives it implements.

Each method is small enough to be atomic in every adapter (one SQL transaction,
one Lua script, one critical section). `commit` is the write path of the
runtime: it takes a `Batch` — many executions' step records, events and state
changes — and applies it in one transaction (group commit).

Values (input, output, step output, event data) are JSON-compatible Python
objects; adapters serialise them. Times are integer milliseconds since the
Unix epoch, UTC. The storage clock (`now`) decides lease expiry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

STATUSES = ("pending", "running", "waiting", "paused", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
ACTIVE = frozenset({"pending", "running", "waiting", "paused"})
#: What `claim` takes once `run_at` is due: pending (ready) and waiting (a durable
#: sleep or a retry backoff until run_at).
CLAIMABLE = ("pending", "waiting")


@dataclass(slots=True)
class ExecutionRecord:
    id: str
    job_name: str
    status: str
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    retry_count: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    priority: int = 0
    created_at: int = 0
    run_at: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    worker_id: str | None = None
    lease_until: int | None = None
    #: Fencing token: raised by every claim, so a stale holder's writes are refused.
    token: int = 0
    #: A lifecycle request for the holder to act on at the next step: "pause" or "cancel".
    control: str | None = None
    #: Why a pending/waiting execution is not running (shown by the dashboard).
    wait_reason: str | None = None
    #: The key of the step the handler is in or last reached.
    current_step: str | None = None
    #: The key given to `start(..., idempotency_key=...)`, if any.
    idempotency_key: str | None = None
    #: The execution this one replays (`Execution.replay`), if any.
    replay_of: str | None = None


@dataclass(slots=True)
class StepRecord:
    execution_id: str
    key: str
    name: str
    kind: str  # run | thread | sleep | child | start | send | wait
    status: str  # running | completed | failed | retrying
    attempt: int = 1
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: int = 0
    completed_at: int | None = None
    #: The execution's retry_count when this record was written: a failure is
    #: replayed within the same job attempt and re-run in the next one.
    job_attempt: int = 0
    #: Order of first call within the execution.
    seq: int = 0
    #: Source line of the call in the handler's file (for the dashboard).
    line: int | None = None


@dataclass(slots=True)
class EventRecord:
    execution_id: str | None
    job_name: str | None
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    at: int = 0
    seq: int = 0  # assigned by storage on commit; strictly increasing


@dataclass(slots=True)
class PipeMessage:
    pipe: str
    data: Any
    at: int = 0
    seq: int = 0  # assigned by storage on commit


class ExecutionFields(TypedDict, total=False):
    """The fields of an execution an update may set (engine/transitions.py builds them)."""

    status: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    retry_count: int
    run_at: int
    started_at: int | None
    completed_at: int | None
    worker_id: str | None
    lease_until: int | None
    control: str | None
    wait_reason: str | None
    current_step: str | None
    #: Set only by a hand-over (`transitions.hand_over`), which claims a waiter in the
    #: release's own write; other claims go through `Storage.claim`.
    token: int


@dataclass(slots=True)
class ExecutionUpdate:
    """Set `fields` on execution `id` when the conditions hold.

    `token`: the holder's fencing token must still be current.
    `statuses`: the current status must be one of these.
    """

    id: str
    fields: ExecutionFields
    token: int | None = None
    statuses: tuple[str, ...] | None = None


@dataclass(slots=True, init=False)
class Batch:
    """One atomic unit of writes.

    `fences` maps execution ids to the token their writer holds: steps,
    events and updates of a fenced execution are dropped (and its id reported
    in `CommitResult.refused`) when the stored token differs.
    """

    executions: list[ExecutionRecord] = field(default_factory=list)
    updates: list[ExecutionUpdate] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    messages: list[PipeMessage] = field(default_factory=list)
    #: Limit/flag state: key -> JSON value, or None to delete.
    state: dict[str, Any] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    #: Preconditions on state: key -> the value it must hold now (None: absent).
    #: If any differs, nothing of the batch is applied and the result says
    #: `conflict`. This compare-and-set makes cron ticks, trigger cursors,
    #: throttle/debounce windows and concurrency slots exactly-once across processes.
    expect: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        executions: list[ExecutionRecord] | None = None,
        updates: list[ExecutionUpdate] | None = None,
        steps: list[StepRecord] | None = None,
        events: list[EventRecord] | None = None,
        messages: list[PipeMessage] | None = None,
        state: dict[str, Any] | None = None,
        fences: dict[str, int] | None = None,
        expect: dict[str, Any] | None = None,
    ) -> None:
        # Written out (the dataclass's own is init=False): empty literals instead of
        # eight default_factory calls, half the cost of a Batch (one per commit).
        self.executions = [] if executions is None else executions
        self.updates = [] if updates is None else updates
        self.steps = [] if steps is None else steps
        self.events = [] if events is None else events
        self.messages = [] if messages is None else messages
        self.state = {} if state is None else state
        self.fences = {} if fences is None else fences
        self.expect = {} if expect is None else expect

    def __bool__(self) -> bool:
        return bool(
            self.executions or self.updates or self.steps or self.events
            or self.messages or self.state
        )  # fmt: skip

    def creates_only(self) -> bool:
        """New executions and events of those executions, nothing else: nothing
        another batch writes or locks (see `Storage.concurrent_inserts`)."""
        if not self.executions or self.updates or self.steps or self.messages:
            return False
        if self.state or self.fences or self.expect:
            return False
        if len(self.events) == len(self.executions):  # the usual shape: one trigger each
            pairs = zip(self.events, self.executions, strict=True)
            if all(ev.execution_id == rec.id for ev, rec in pairs):
                return True
        new = {rec.id for rec in self.executions}
        return all(ev.execution_id in new for ev in self.events)


@dataclass(slots=True, init=False)
class CommitResult:
    """What a commit did. Callers read it and never change its containers: an adapter
    may hand out shared empty ones (the memory adapter does, on every commit)."""

    #: Per update of the batch, whether it was applied.
    applied: list[bool] = field(default_factory=list)
    #: Fenced execution ids whose token was stale: none of their writes applied.
    refused: set[str] = field(default_factory=set)
    #: Current `control` of each fenced execution, after the commit.
    controls: dict[str, str | None] = field(default_factory=dict)
    #: The batch's events with their sequence numbers.
    events: list[EventRecord] = field(default_factory=list)
    #: A state precondition (`Batch.expect`) did not hold: nothing was applied.
    conflict: bool = False

    def __init__(
        self,
        applied: list[bool] | None = None,
        refused: set[str] | None = None,
        controls: dict[str, str | None] | None = None,
        events: list[EventRecord] | None = None,
        conflict: bool = False,
    ) -> None:
        # Written out, as Batch's: literals instead of default_factory calls.
        self.applied = [] if applied is None else applied
        self.refused = set() if refused is None else refused
        self.controls = {} if controls is None else controls
        self.events = [] if events is None else events
        self.conflict = conflict


@dataclass(slots=True)
class ExecutionQuery:
    statuses: Sequence[str] | None = None
    job_names: Sequence[str] | None = None
    ids: Sequence[str] | None = None
    id_contains: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    replay_of: str | None = None
    created_before: int | None = None
    created_after: int | None = None
    started_before: int | None = None
    started_after: int | None = None
    completed_before: int | None = None
    completed_after: int | None = None
    retry_count: int | None = None
    retry_count_less_than: int | None = None
    retry_count_greater_than: int | None = None
    idempotency_key: str | None = None
    #: A subset of the input JSON: nested dicts match recursively, any other value
    #: must be equal (`query.json_contains`); None: no condition.
    input: dict[str, Any] | None = None
    #: Keyset pagination: only ids strictly older (newest order) / newer (oldest order).
    cursor: str | None = None
    limit: int | None = None
    offset: int = 0
    order: str = "newest"  # newest | oldest (by creation; ids are time-ordered)


@dataclass(frozen=True, slots=True)
class TimeBuckets:
    """`n` consecutive windows of `width_ms` from `start`, over an execution's time `field`."""

    field: Literal["created_at", "completed_at"]
    start: int
    width_ms: int
    n: int

    @property
    def end(self) -> int:
        return self.start + self.width_ms * self.n

    def index(self, at: int | None) -> int | None:
        """The window `at` falls in, or None outside them all."""
        if at is None or not self.start <= at < self.end:
            return None
        return (at - self.start) // self.width_ms


@dataclass(slots=True)
class Aggregate:
    """What `Storage.aggregate` answers: counts and durations, never records."""

    #: (job_name, status) -> executions per window, for the pairs that have any.
    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: job_name -> run times (completed_at - started_at, ms) of the completed
    #: executions among them (the most recent `DURATIONS_LIMIT`), ascending.
    durations: dict[str, list[int]] = field(default_factory=dict)


#: How many run times `Storage.aggregate` returns per call at most (the most recent).
DURATIONS_LIMIT = 20_000


def positive_bound(value: Any, name: str, default: Any) -> Any:
    """A connection bound given by the user (`max_connections`, `acquire_timeout`): a
    positive number, or the adapter's default when None; anything else is refused."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"storage {name} must be a positive number, got {value!r}")
    return value


class Storage(abc.ABC):
    """What an adapter implements. `None`/empty means absent; no method raises for absence.
    After `aclose()`, other methods may raise RuntimeError."""

    #: Short name for logs and the dashboard ("memory", "sqlite", ...).
    kind: str = "custom"
    #: True when committed data survives the process (memory: False).
    durable: bool = True
    #: True when the adapter implements `commit_now`: it commits synchronously (nothing
    #: goes to disk or over a network), so the runtime calls it directly, without
    #: group commit.
    synchronous_commit: bool = False
    #: True when a batch of new executions and their events only (see
    #: `Committer`) may commit concurrently with other commits: it locks nothing
    #: another batch holds, so it need not wait behind them in the group commit.
    concurrent_inserts: bool = False
    #: How many group commits may be in flight at once (each on its own connection):
    #: above 1, a group whose batches touch only their own executions, none of them
    #: in a group in flight, commits while the previous one still runs (`Committer`).
    commit_pipeline: int = 1
    #: False for a client of storage another process owns (a worker's RemoteStorage):
    #: that process runs retention and expiry sweeps, this one does not.
    housekeeping: bool = True

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create/migrate the schema. Idempotent."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    @abc.abstractmethod
    async def now(self) -> int:
        """The storage clock, ms. Leases are compared against it."""

    @abc.abstractmethod
    async def commit(self, batch: Batch) -> CommitResult:
        """Apply the batch atomically. The batch's records are handed over: the
        caller does not touch them afterwards, so an adapter may keep them.

        Inserts executions (an existing id is an error), applies the
        conditional updates, upserts steps by (execution_id, key), appends
        events and pipe messages with fresh sequence numbers, and writes the
        state keys — all or nothing, except that writes of a fenced
        execution with a stale token are skipped as documented on `Batch`.
        When a `Batch.expect` precondition fails, nothing at all is written
        and the result has `conflict=True` (JSON values compare by equality).
        An update naming an unknown field, or an execution id inserted twice
        (also within one batch), raises ValueError before anything is written.
        A connection error, or cancelling the caller, means the outcome is
        unknown: the write may or may not have been applied. On `conflict`,
        `applied`, `refused`, `controls` and `events` of the result are empty.
        An adapter must not skip a batch that is falsy but carries fences or
        expectations.
        """

    def commit_now(self, batch: Batch) -> CommitResult:
        """`commit`, synchronously and with the same contract: atomic because no other
        coroutine runs meanwhile. Only adapters with `synchronous_commit` implement
        it; the others raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} commits asynchronously (synchronous_commit is False)")

    @abc.abstractmethod
    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        job_names: Sequence[str] | None = None,
        exclude_jobs: Sequence[str] = (),
    ) -> list[ExecutionRecord]:
        """Take up to `limit` executions in a CLAIMABLE status whose `run_at` is due.

        Only jobs in `job_names` (when given; several queues with different
        jobs may share one storage) and not in `exclude_jobs` (paused jobs).
        Highest priority first, then earliest `run_at`, then id. Each claimed
        one becomes running, held by `worker_id` until now+`lease_ms`, with
        its token raised by one and `started_at` set if unset; every other
        field (wait_reason, control, current_step...) is left as it was.
        """

    @abc.abstractmethod
    async def renew(
        self, worker_id: str, ids: Sequence[str], lease_ms: int
    ) -> dict[str, str | None]:
        """Extend the leases `worker_id` still holds; returns id -> control for those."""

    @abc.abstractmethod
    async def reclaim(self, dead_workers: Sequence[str] = ()) -> list[str]:
        """Running executions whose lease expired (or whose holder is in
        `dead_workers`) go back to pending with a raised token. Returns their ids."""

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution as last committed, or None when there is none with that id.
        The record is the caller's (a copy): changing it changes nothing stored."""

    @abc.abstractmethod
    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        """The executions matching every set filter of `query` (time bounds strict,
        as `storage.query.matches` defines them), in `order` by id (ids are
        time-ordered), after `cursor`, skipping `offset`, at most `limit`. Copies,
        as `get_execution`. An empty list when nothing matches."""

    @abc.abstractmethod
    async def count(self, query: ExecutionQuery) -> dict[str, int]:
        """Matching executions counted by status (limit/offset/cursor ignored)."""

    @abc.abstractmethod
    async def delete_executions(self, ids: Sequence[str]) -> list[str]:
        """Delete those of `ids` that are in a TERMINAL status, with their steps and
        events, in one atomic change; returns the ids deleted. Unknown ids and
        executions not (or no longer) terminal are left alone. Pipe messages, state
        and other executions (children included: the caller passes whole trees) stay."""

    @abc.abstractmethod
    async def aggregate(self, query: ExecutionQuery, buckets: TimeBuckets, *, durations: bool = False) -> Aggregate:
        """The executions matching `query` (limit/offset/cursor ignored) whose
        `buckets.field` falls in one of the windows, counted per job, status and
        window; with `durations`, also the run times of the completed ones. For
        charts and statistics: no record is loaded into the caller."""

    @abc.abstractmethod
    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        """The step history, in first-call order (`seq`)."""

    async def get_steps_many(self, execution_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """`get_steps` of each id, for a batch of claimed executions: every id given is
        a key, an unknown one or one without steps mapped to []. The default calls
        `get_steps` once per id; adapters with round trips answer in one."""
        return {eid: await self.get_steps(eid) for eid in execution_ids}

    @abc.abstractmethod
    async def read_events(
        self, after_seq: int = 0, *, limit: int = 1000, execution_id: str | None = None
    ) -> list[EventRecord]:
        """Events with seq > after_seq, ascending. Seqs strictly increase and become
        visible in order, so a reader following `after_seq` never misses one."""

    @abc.abstractmethod
    async def last_event_seq(self) -> int:
        """The highest event seq committed so far (0 when the log is empty): a reader
        that starts after it sees every later event."""

    @abc.abstractmethod
    async def next_due(
        self, job_names: Sequence[str] | None = None, exclude_jobs: Sequence[str] = ()
    ) -> int | None:
        """The earliest run_at among CLAIMABLE executions (same job filters as claim), or None."""

    @abc.abstractmethod
    async def read_messages(
        self, pipe: str, after_seq: int = 0, *, limit: int = 1000
    ) -> list[PipeMessage]:
        """Messages of `pipe` with seq > after_seq, ascending, at most `limit`. Seqs
        are shared by all pipes, strictly increase and become visible in order, as
        events' do."""

    @abc.abstractmethod
    async def last_message_seq(self, pipe: str) -> int:
        """The highest seq among `pipe`'s messages (0 when it has none)."""

    @abc.abstractmethod
    async def get_state(self, keys: Sequence[str]) -> dict[str, Any]:
        """The present state keys with their values."""

    @abc.abstractmethod
    async def list_state(self, prefix: str) -> dict[str, Any]:
        """Every state key starting with `prefix`, with its value (empty when none)."""

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that `worker_id` is alive (its info: host, pid, url, state)."""

    @abc.abstractmethod
    async def list_workers(self) -> list[dict[str, Any]]:
        """Every known worker, in no particular order: id, info and last_heartbeat
        (ms, on the storage clock)."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None:
        """Forget `worker_id` (a no-op when unknown). Its executions are untouched:
        `reclaim` gives them back when their leases expire."""

    def is_unavailable(self, exc: BaseException) -> bool:
        """True when `exc`, raised by one of this storage's methods, means the store
        could not be reached or the connection dropped (a server restart, a network
        cut): the outcome of that call is unknown, and the same call may work again
        later. False for everything else (a bad batch, lost data, a bug). The runtime
        then keeps the execution instead of failing it, and retries the storage.
        The default looks for an OSError (refused, reset, timed out...) in the
        exception's cause chain; adapters add their drivers' connection errors."""
        return any(isinstance(e, OSError) for e in exception_chain(exc))

    def on_wakeup(self, callback: Callable[[], None]) -> None:
        """Call `callback` when another process makes work due (new, resumed or
        woken executions, pipe messages) or writes a concurrency slot's state
        (`slots:*` keys: a slot handed to a step waiting here). Adapters that can push (PostgreSQL
        LISTEN/NOTIFY, Redis pub/sub) override this; the default relies on the
        runtime's polling fallback. The callback runs on the event loop and must
        not block; it may fire spuriously (e.g. once after each reconnect)."""
        return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, in order."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out
