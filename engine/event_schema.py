"""Every kind of event in the log, with the shape of its data: the one list the engine
writes from, the hooks read and the dashboard draws from.

An event is an `EventRecord(execution_id, job_name, type, data, at)`; `type` is an
`EventKind` (a `str`, so stored logs read back as plain strings compare equal) and
`data` is the TypedDict `SCHEMA[type]` names. Keys marked `NotRequired` appear only
in some cases (a child step carries `child_id`, a manual retry `manual`). Groups
below (`STEP_POSITION`, `ENDINGS`...) are what readers match on instead of spelling
kinds out again.
"""

# No `from __future__ import annotations`: TypedDict must see `NotRequired` itself.
import enum
from typing import Any, NotRequired, TypedDict


class EventKind(enum.StrEnum):
    # creation
    TRIGGER = "trigger"
    TRIGGER_ERROR = "trigger_error"
    QUEUED = "queued"
    DEBOUNCED = "debounced"
    REPLAY = "replay"
    # an attempt
    START = "start"
    STEP_START = "step_start"
    STEP_SUCCESS = "step_success"
    STEP_FAILURE = "step_failure"
    SLEEP = "sleep"
    WAKE = "wake"
    WAIT = "wait"
    LOG = "log"
    # the lifecycle
    PAUSE = "pause"
    RESUME = "resume"
    REQUESTED = "requested"
    RELEASED = "released"
    RETRY = "retry"
    ERROR = "error"
    # endings
    SUCCESS = "success"
    FAILURE = "failure"
    CANCEL = "cancel"
    # around executions
    HOOK_ERROR = "hook_error"
    PIPE_SEND = "pipe_send"


class ErrorData(TypedDict):
    """A stored error (see `errors.error_to_dict`)."""

    type: str
    message: str
    traceback: NotRequired[str]


class Trigger(TypedDict):
    input: Any
    parent_id: str | None
    #: Started by a schedule: its expression and the tick (ms).
    cron: NotRequired[str]
    tick: NotRequired[int]
    #: Started by a pipe message or another job's output, and the message's seq.
    source: NotRequired[str]
    seq: NotRequired[int | None]


class TriggerError(TypedDict):
    """A pipe message or a job's output that could not start the job listing it."""

    error: dict[str, Any]
    pipe: NotRequired[str]
    seq: NotRequired[int]
    job: NotRequired[str]


class Queued(TypedDict):
    """Held back by flow control until `retry_at`."""

    reason: str
    retry_at: int


class Debounced(TypedDict):
    """No longer written (a debounced trigger writes `trigger`, and `cancel` with `by`
    for the pending execution it supersedes); kept for logs written before."""

    input: Any
    mode: str
    run_at: NotRequired[int]


class Start(TypedDict):
    attempt: int
    resumed: bool
    worker: str
    #: Fingerprint of the job's source this process ran (`sources.py`; None: no source).
    #: Absent from starts written before source versions were recorded.
    source: NotRequired[str | None]


class StepStart(TypedDict):
    key: str
    name: str
    kind: str
    attempt: int
    line: int | None
    child_id: NotRequired[str]


class StepSuccess(TypedDict):
    key: str
    name: str
    kind: str
    attempt: int
    duration_ms: NotRequired[int]
    child_id: NotRequired[str]


class StepFailure(TypedDict):
    key: str
    name: str
    kind: str
    attempt: int
    error: dict[str, Any]
    will_retry: bool
    duration_ms: NotRequired[int]
    child_id: NotRequired[str]


class Sleep(TypedDict):
    key: str
    until: int
    line: int | None


class Wake(TypedDict):
    key: str


class Wait(TypedDict):
    key: str
    line: int | None
    kind: NotRequired[str]
    job: NotRequired[str]
    pipe: NotRequired[str]
    child_id: NotRequired[str]
    #: `wait_for(..., timeout=)`: when the wait fails with TimeoutError (ms; None: never).
    deadline: NotRequired[int | None]


class Log(TypedDict):
    """A `log()` line (or a thread's `ctx.logger`): `key` is its step, None between steps."""

    key: str | None
    message: str
    fields: NotRequired[dict[str, Any]]


class Replay(TypedDict):
    """Created by `Execution.replay`: the original, the step it replays from and the
    steps it reuses (copied, not run again), and who asked."""

    of: str
    from_step: str | None
    reused: list[str]
    by: str


class Asked(TypedDict):
    """A pause or resume; `by` says who asked (api, dashboard, bulk, parent <id>)."""

    by: NotRequired[str]


class Requested(TypedDict):
    """A pause or cancel asked of a running execution, acted on by its holder at its
    next step boundary (the `pause` or `cancel` event follows)."""

    action: str
    by: str
    reason: NotRequired[str | None]


class Released(TypedDict):
    reason: str


class Retry(TypedDict):
    attempt: int
    run_at: int
    delay_ms: int
    manual: NotRequired[bool]
    by: NotRequired[str]


class AttemptError(TypedDict):
    attempt: int
    error: dict[str, Any]


class Success(TypedDict):
    output: Any


class Failure(TypedDict):
    error: dict[str, Any]


class Cancel(TypedDict):
    reason: str | None
    #: Who asked (api, dashboard, bulk, parent <id>); for a debounced execution
    #: superseded by a later trigger, that trigger's execution.
    by: NotRequired[str]


class HookError(TypedDict):
    hook: str
    error: dict[str, Any]


class PipeSend(TypedDict):
    pipe: str
    data: Any


#: The data each kind carries.
SCHEMA: dict[EventKind, type] = {
    EventKind.TRIGGER: Trigger,
    EventKind.TRIGGER_ERROR: TriggerError,
    EventKind.QUEUED: Queued,
    EventKind.DEBOUNCED: Debounced,
    EventKind.REPLAY: Replay,
    EventKind.START: Start,
    EventKind.STEP_START: StepStart,
    EventKind.STEP_SUCCESS: StepSuccess,
    EventKind.STEP_FAILURE: StepFailure,
    EventKind.SLEEP: Sleep,
    EventKind.WAKE: Wake,
    EventKind.WAIT: Wait,
    EventKind.LOG: Log,
    EventKind.PAUSE: Asked,
    EventKind.RESUME: Asked,
    EventKind.REQUESTED: Requested,
    EventKind.RELEASED: Released,
    EventKind.RETRY: Retry,
    EventKind.ERROR: AttemptError,
    EventKind.SUCCESS: Success,
    EventKind.FAILURE: Failure,
    EventKind.CANCEL: Cancel,
    EventKind.HOOK_ERROR: HookError,
    EventKind.PIPE_SEND: PipeSend,
}

#: Events of one step (they carry its `key`).
STEP_EVENTS = frozenset({
    EventKind.STEP_START, EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE,
    EventKind.SLEEP, EventKind.WAIT, EventKind.WAKE,
})  # fmt: skip
#: Events that say which step an execution is in now (its live `current_step`).
STEP_POSITION = frozenset({EventKind.STEP_START, EventKind.SLEEP, EventKind.WAIT})
#: The last event of an execution that ended.
ENDINGS = frozenset({EventKind.SUCCESS, EventKind.FAILURE, EventKind.CANCEL})
#: Events that change the failure statistics.
OUTCOMES = frozenset({EventKind.SUCCESS, EventKind.FAILURE, EventKind.ERROR})


def check(kind: str, data: dict[str, Any]) -> list[str]:
    """What is wrong with an event's data against its schema (empty: nothing)."""
    try:
        shape = SCHEMA[EventKind(kind)]
    except ValueError:
        return [f"unknown event kind {kind!r}"]
    required: frozenset[str] = getattr(shape, "__required_keys__", frozenset())
    allowed: frozenset[str] = required | getattr(shape, "__optional_keys__", frozenset())
    problems = [f"{kind}: missing {k!r}" for k in sorted(required - set(data))]
    problems += [f"{kind}: unexpected {k!r}" for k in sorted(set(data) - allowed)]
    return problems


class HookEvent(enum.StrEnum):
    """What hooks and listeners are called for: a job's life, as the log records it,
    plus `settled` (once, after any ending)."""

    TRIGGER = "trigger"
    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    SETTLED = "settled"
    STEP_START = "step_start"
    STEP_SUCCESS = "step_success"
    STEP_FAILURE = "step_failure"


#: `job.on(event, fn)`: the job events, and `step` for all three step events.
JOB_EVENTS = (*(e.value for e in HookEvent if not e.startswith("step_")), "step")
#: `queue.on(event, fn)`: job events prefixed `job_`, step events as they are.
QUEUE_EVENTS = tuple(e.value if e.startswith("step_") else f"job_{e.value}" for e in HookEvent)
