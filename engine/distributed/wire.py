"""The worker protocol on the wire: one typed JSON request and reply per storage call.

A worker's `RemoteStorage` and the node's dispatcher share these definitions, so
both ends decode with the same schema: a malformed body is refused by type
(`msgspec.ValidationError` names the field), never half-understood. Records
travel as the storage dataclasses themselves (msgspec encodes them field by
field), so the protocol cannot drift from engine/storage/base.py.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec

from ..storage.base import (
    Batch,
    CommitResult,
    EventRecord,
    ExecutionFields,
    ExecutionQuery,
    ExecutionRecord,
    PipeMessage,
    StepRecord,
)

#: Bumped when a call's shape changes; the node refuses other versions at registration.
PROTOCOL = 1
TOKEN_HEADER = "authorization"
WORKER_HEADER = "x-dq-worker"


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    pass


class NoArgs(_Args):
    pass


class Claim(_Args):
    worker_id: str
    limit: int
    lease_ms: int
    job_names: list[str] | None = None
    exclude_jobs: list[str] = []
    #: Long poll: hold the request up to this long while nothing is due.
    wait_ms: int = 0


class Renew(_Args):
    worker_id: str
    ids: list[str]
    lease_ms: int


class Reclaim(_Args):
    dead_workers: list[str] = []


class ById(_Args):
    execution_id: str


class Query(_Args):
    query: ExecutionQuery


class ReadEvents(_Args):
    after_seq: int = 0
    limit: int = 1000
    execution_id: str | None = None


class NextDue(_Args):
    job_names: list[str] | None = None
    exclude_jobs: list[str] = []


class ReadMessages(_Args):
    pipe: str
    after_seq: int = 0
    limit: int = 1000


class Pipe(_Args):
    pipe: str


class Keys(_Args):
    keys: list[str]


class Prefix(_Args):
    prefix: str


class Heartbeat(_Args):
    worker_id: str
    info: dict[str, Any]


class WorkerId(_Args):
    worker_id: str


class Interrupt(_Args):
    """The node to a worker's endpoint: these executions have a pause or cancel to act on."""

    executions: list[str]


class Register(_Args):
    """What a worker says about itself: how to reach it, what it can run, on which code."""

    worker_id: str
    protocol: int
    host: str
    pid: int
    version: str
    capacity: int
    #: Job name -> fingerprint of its code (see `fingerprint.py`).
    jobs: dict[str, str]
    #: Where the node can call the worker (wake, interrupt), or None: polling only.
    url: str | None = None


class Claimed(msgspec.Struct):
    """Claimed executions with their step histories: the worker loads each history
    next, so it comes in the same round trip."""

    records: list[ExecutionRecord]
    histories: dict[str, list[StepRecord]]


class Registered(msgspec.Struct):
    node: str
    interval_ms: int
    #: Jobs this worker may run, and those refused because its code differs from the node's.
    accepted: list[str]
    refused: dict[str, str]


class HeartbeatReply(msgspec.Struct):
    #: False: the node does not know this worker (it restarted): register again.
    known: bool = True
    #: The worker was marked lost since its last heartbeat: its executions went to others.
    lost: bool = False


#: Call name -> (argument type, reply type). The reply is `{"result": ...}` of that type.
CALLS: dict[str, tuple[type[_Args], Any]] = {
    "now": (NoArgs, int),
    "commit": (NoArgs, CommitResult),  # the body is the Batch itself (see `encode_commit`)
    "claim": (Claim, Claimed),
    "renew": (Renew, dict[str, str | None]),
    "reclaim": (Reclaim, list[str]),
    "get_execution": (ById, ExecutionRecord | None),
    "query": (Query, list[ExecutionRecord]),
    "count": (Query, dict[str, int]),
    "get_steps": (ById, list[StepRecord]),
    "read_events": (ReadEvents, list[EventRecord]),
    "last_event_seq": (NoArgs, int),
    "next_due": (NextDue, int | None),
    "read_messages": (ReadMessages, list[PipeMessage]),
    "last_message_seq": (Pipe, int),
    "get_state": (Keys, dict[str, Any]),
    "list_state": (Prefix, dict[str, Any]),
    "heartbeat": (Heartbeat, HeartbeatReply),
    "list_workers": (NoArgs, list[dict[str, Any]]),
    "remove_worker": (WorkerId, None),
    "register": (Register, Registered),
}

@cache
def dq_version() -> str:
    try:
        return version("dq")
    except PackageNotFoundError:
        return "0+unknown"


_encoder = msgspec.json.Encoder()
encode = _encoder.encode
_batch_decoder = msgspec.json.Decoder(Batch)
_arg_decoders = {name: msgspec.json.Decoder(args) for name, (args, _reply) in CALLS.items()}
_reply_decoders = {
    name: msgspec.json.Decoder(dict[str, reply])  # type: ignore[valid-type]  # a runtime type, by design
    for name, (_args, reply) in CALLS.items()
}


class _RawUpdate(msgspec.Struct):
    fields: dict[str, Any]


class _RawUpdates(msgspec.Struct):
    updates: list[_RawUpdate] = []


_raw_updates_decoder = msgspec.json.Decoder(_RawUpdates)
_UPDATABLE = frozenset(ExecutionFields.__annotations__)


def decode_batch(body: bytes) -> Batch:
    batch = _batch_decoder.decode(body)
    if batch.updates:
        # msgspec drops keys a TypedDict does not declare: refuse them instead, so a
        # worker's unknown field is a 400, never a silently smaller update.
        for upd in _raw_updates_decoder.decode(body).updates:
            unknown = set(upd.fields) - _UPDATABLE
            if unknown:
                raise msgspec.ValidationError(f"unknown execution field(s) {sorted(unknown)} - at `$.updates[].fields`")
    return batch


def decode_args(call: str, body: bytes) -> Any:
    return _arg_decoders[call].decode(body or b"{}")


def decode_reply(call: str, body: bytes) -> Any:
    return _reply_decoders[call].decode(body)["result"]
