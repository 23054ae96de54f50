"""`RemoteStorage`: the Storage protocol spoken to an orchestration node over HTTP.

A worker runs the ordinary runtime on top of this adapter: every protocol call
is one POST to the node, and each group-committed `Batch` (many executions'
step reports at once) is one request, so a step counts as done exactly when the
node has stored it. The node applies the call to its real storage, with the
storage's own fencing.

Retries: a request that never reached the node (connection refused while the
node restarts) is retried with backoff for up to `reconnect_s`; a read that
failed mid-way is retried too. A write whose outcome is unknown is not retried
here: it raises `NodeUnavailable` (a ConnectionError, so `is_unavailable` says
so) and the runtime hands the execution back and resumes it by replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from ..errors import DqError
from ..storage.base import (
    Aggregate,
    Batch,
    CommitResult,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    PipeMessage,
    StepRecord,
    Storage,
    TimeBuckets,
)
from . import wire

log = logging.getLogger("dq.worker")

#: Calls that change nothing, or the same thing when repeated: safe to retry after any failure.
_REPEATABLE = frozenset({
    "now", "renew", "get_execution", "query", "count", "get_steps", "read_events", "last_event_seq",
    "next_due", "read_messages", "last_message_seq", "get_state", "list_state", "heartbeat",
    "list_workers", "remove_worker", "register",
})  # fmt: skip
_BACKOFF_S = (0.05, 2.0)
_HISTORY_TTL_S = 10.0


class NodeUnavailable(ConnectionError):
    """The node could not be reached, or the outcome of a write is unknown."""


class NodeRefused(DqError):
    """The node refused the request (bad token, bad request, a protocol mismatch)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"orchestration node refused the request ({status}): {message}")
        self.status = status


class RemoteStorage(Storage):
    kind = "remote"
    housekeeping = False

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        reconnect_s: float = 60.0,
        long_poll_ms: int = 5_000,
        timeout_s: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"orchestrator URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token
        self.reconnect_s = reconnect_s
        self.long_poll_ms = long_poll_ms
        self.timeout_s = timeout_s
        #: Sent at `open()` and again whenever the node says it does not know this worker.
        self.registration: wire.Register | None = None
        self.registered: wire.Registered | None = None
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        #: Histories that came with claimed executions, until the runtime loads them
        #: (right after the claim; an entry left unread is dropped after _HISTORY_TTL_S).
        self._histories: dict[str, tuple[float, list[StepRecord]]] = {}

    # -- transport -----------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("RemoteStorage is closed")
        if self._client is None:
            headers = {"content-type": "application/json"}
            if self.token:
                headers[wire.TOKEN_HEADER] = f"Bearer {self.token}"
            if self.registration is not None:
                headers[wire.WORKER_HEADER] = self.registration.worker_id
            timeout = httpx.Timeout(self.timeout_s + self.long_poll_ms / 1000, connect=5.0)
            self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout,
                                             limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))  # fmt: skip
        return self._client

    async def _call(self, call: str, body: bytes) -> Any:
        delay_s = _BACKOFF_S[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_s
        while True:
            try:
                response = await self._http().post(f"/v1/{call}", content=body)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if (sent and call not in _REPEATABLE) or loop.time() > deadline:
                    raise NodeUnavailable(f"orchestration node {self.url}: {type(exc).__name__}: {exc}") from exc
                log.debug("dq: node unreachable for %s (%s); retrying in %.2fs", call, exc, delay_s)
            else:
                if response.status_code == 200:
                    return wire.decode_reply(call, response.content)
                message = _error_text(response)
                if response.status_code == 409 and call != "register" and self.registration is not None:
                    await self.register()  # the node restarted and forgot us
                    continue
                if response.status_code != 503:
                    raise NodeRefused(response.status_code, message)
                if loop.time() > deadline:
                    raise NodeUnavailable(f"orchestration node {self.url}: {message}")
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _BACKOFF_S[1])

    async def _args(self, call: str, args: msgspec.Struct) -> Any:
        return await self._call(call, wire.encode(args))

    async def register(self) -> wire.Registered:
        assert self.registration is not None
        reply: wire.Registered = await self._args("register", self.registration)
        self.registered = reply
        for job, why in sorted(reply.refused.items()):
            log.error("dq: the node refuses job %r to this worker: %s", job, why)
        return reply

    # -- the protocol --------------------------------------------------------------
    async def open(self) -> None:
        self._closed = False
        if self.registration is not None:
            await self.register()

    async def aclose(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def now(self) -> int:
        return int(await self._call("now", b"{}"))

    async def commit(self, batch: Batch) -> CommitResult:
        result: CommitResult = await self._call("commit", wire.encode(batch))
        return result

    async def claim(
        self, worker_id: str, *, limit: int, lease_ms: int,
        job_names: Sequence[str] | None = None, exclude_jobs: Sequence[str] = (),
    ) -> list[ExecutionRecord]:  # fmt: skip
        args = wire.Claim(worker_id, limit, lease_ms, list(job_names) if job_names is not None else None,
                          list(exclude_jobs), self.long_poll_ms)  # fmt: skip
        claimed: wire.Claimed = await self._args("claim", args)
        now = time.monotonic()
        self._histories = {k: v for k, v in self._histories.items() if now - v[0] < _HISTORY_TTL_S}
        self._histories.update((eid, (now, steps)) for eid, steps in claimed.histories.items())
        return claimed.records

    async def renew(self, worker_id: str, ids: Sequence[str], lease_ms: int) -> dict[str, str | None]:
        controls: dict[str, str | None] = await self._args("renew", wire.Renew(worker_id, list(ids), lease_ms))
        return controls

    async def reclaim(self, dead_workers: Sequence[str] = ()) -> list[str]:
        ids: list[str] = await self._args("reclaim", wire.Reclaim(list(dead_workers)))
        return ids

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        rec: ExecutionRecord | None = await self._args("get_execution", wire.ById(execution_id))
        return rec

    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        recs: list[ExecutionRecord] = await self._args("query", wire.Query(query))
        return recs

    async def count(self, query: ExecutionQuery) -> dict[str, int]:
        counts: dict[str, int] = await self._args("count", wire.Query(query))
        return counts

    async def delete_executions(self, ids: Sequence[str]) -> list[str]:
        raise DqError("a worker's storage deletes nothing: retention runs on the orchestration node")

    async def aggregate(self, query: ExecutionQuery, buckets: TimeBuckets, *, durations: bool = False) -> Aggregate:
        # Charts are the node's dashboard's business; a worker runs handlers only.
        raise DqError("a worker's storage does not aggregate: ask the orchestration node's dashboard")

    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        # Right after a claim nobody else writes this execution's steps: the
        # history that came with it is current.
        cached = self._histories.pop(execution_id, None)
        if cached is not None and time.monotonic() - cached[0] < _HISTORY_TTL_S:
            return cached[1]
        steps: list[StepRecord] = await self._args("get_steps", wire.ById(execution_id))
        return steps

    async def read_events(
        self, after_seq: int = 0, *, limit: int = 1000, execution_id: str | None = None
    ) -> list[EventRecord]:
        events: list[EventRecord] = await self._args("read_events", wire.ReadEvents(after_seq, limit, execution_id))
        return events

    async def last_event_seq(self) -> int:
        return int(await self._call("last_event_seq", b"{}"))

    async def next_due(
        self, job_names: Sequence[str] | None = None, exclude_jobs: Sequence[str] = ()
    ) -> int | None:
        names = list(job_names) if job_names is not None else None
        due: int | None = await self._args("next_due", wire.NextDue(names, list(exclude_jobs)))
        return due

    async def read_messages(self, pipe: str, after_seq: int = 0, *, limit: int = 1000) -> list[PipeMessage]:
        msgs: list[PipeMessage] = await self._args("read_messages", wire.ReadMessages(pipe, after_seq, limit))
        return msgs

    async def last_message_seq(self, pipe: str) -> int:
        return int(await self._args("last_message_seq", wire.Pipe(pipe)))

    async def get_state(self, keys: Sequence[str]) -> dict[str, Any]:
        state: dict[str, Any] = await self._args("get_state", wire.Keys(list(keys)))
        return state

    async def list_state(self, prefix: str) -> dict[str, Any]:
        state: dict[str, Any] = await self._args("list_state", wire.Prefix(prefix))
        return state

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        await self.beat(worker_id, info)

    async def beat(self, worker_id: str, info: dict[str, Any]) -> wire.HeartbeatReply:
        """A heartbeat that returns the node's answer (re-registers when it forgot us)."""
        reply: wire.HeartbeatReply = await self._args("heartbeat", wire.Heartbeat(worker_id, info))
        if not reply.known and self.registration is not None:
            await self.register()
        return reply

    async def list_workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = await self._call("list_workers", b"{}")
        return workers

    async def remove_worker(self, worker_id: str) -> None:
        await self._args("remove_worker", wire.WorkerId(worker_id))


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)
