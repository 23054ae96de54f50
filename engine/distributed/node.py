"""The orchestration node: applies workers' storage calls to the real storage and tracks them.

Workers speak the Storage protocol (see `remote.py`); this dispatcher decodes
each call with the shared schema (`wire.py`), checks it, and applies it to the
node queue's storage. Step reports go through the node's group committer, so
concurrent workers' reports share transactions and the dashboard sees them at
once. The node also keeps the worker registry:

- `register`: how to reach the worker, its capacity, and a fingerprint per job;
  jobs whose code differs from the node's are refused to it (it is told why).
- `heartbeat` every `interval`; a worker silent for 3 intervals is marked lost
  (a compare-and-set on the shared storage, so one node acts when several
  share it), and its executions are reclaimed with raised fencing tokens: they
  resume elsewhere from their last stored step, and whatever the lost worker
  reports later is refused by the storage's fencing. Its next heartbeat is
  answered `lost`, and it drops what it held.
- `claim` is a long poll: while nothing is due it waits for new work (events on
  the node's bus, the next due time) instead of having workers poll in a loop.
- A pause or cancel of an execution one of its workers holds is pushed to that
  worker's endpoint at once (`push.py`); polling stays the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ..ids import now_ms
from ..scheduler import wait_event
from ..storage.base import Batch, CommitResult, ExecutionQuery
from . import wire
from .fingerprint import fingerprints
from .push import Pusher

if TYPE_CHECKING:
    from ..queue import Queue

log = logging.getLogger("dq.node")

#: Heartbeats a worker may miss before it is lost.
MISSED_BEATS = 3
#: Event types after which a long-polling claim should look again.
_NEW_WORK = frozenset({"trigger", "retry", "released", "resume", "queued", "debounced"})
#: The event of a pause or cancel asked of a running execution (transitions.request).
_REQUESTED = "requested"
_LOST_KEY = "worker_lost:"
#: A lost worker stays listed (the Workers page shows it) this long, then is forgotten.
FORGET_AFTER_MS = 3_600_000
_KNOWN_IDS = 200_000
_MAX_WAIT_MS = 30_000


class NodeError(Exception):
    """A request the node refuses: the HTTP status and a message for the worker."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RemoteWorker:
    registration: wire.Register
    accepted: frozenset[str]
    refused: dict[str, str]
    #: Late reports refused by fencing since it registered.
    refused_reports: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Node:
    def __init__(
        self, queue: Queue, *, interval_ms: int = 1000, local_work: bool = True, token: str | None = None
    ) -> None:
        self.queue = queue
        self.storage = queue.storage
        self.interval_ms = interval_ms
        self.local_work = local_work
        self.id = f"node:{socket.gethostname()}:{os.getpid()}"
        self.url: str | None = None
        self.fingerprints = fingerprints(queue.definitions)
        self.workers: dict[str, RemoteWorker] = {}
        #: Workers this node marked lost and that have not sent a heartbeat since.
        self.lost: set[str] = set()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False
        #: Calls to workers' endpoints, with the same shared token workers send here.
        self.pusher = Pusher(token)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        runtime = await self.queue.started()
        if not self.local_work:
            # The node's own runtime still reclaims expired leases and runs cron and
            # triggers; it just never takes an execution itself.
            runtime.max_active = 0
        for name, coro in (("monitor", self._monitor()), ("work", self._follow_work())):
            self._tasks.append(asyncio.create_task(coro, name=f"dq-node-{name}"))

    async def close(self) -> None:
        self.closing = True
        self._wake_pollers()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.pusher.aclose()

    # -- dispatch ----------------------------------------------------------------------
    async def handle(self, call: str, body: bytes, worker: str | None, gone: asyncio.Event | None = None) -> bytes:
        """Apply one call; the reply body. Raises NodeError for a request to refuse.
        `gone` is set when the caller disconnected: a long poll then claims nothing more."""
        if call not in wire.CALLS:
            raise NodeError(404, f"unknown call {call!r}; expected one of {sorted(wire.CALLS)}")
        try:
            if call == "commit":
                result: Any = await self._commit(wire.decode_batch(body), worker)
            elif call == "claim":
                result = await self._claim(wire.decode_args(call, body), gone or asyncio.Event())
            else:
                result = await getattr(self, f"_{call}")(wire.decode_args(call, body))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise NodeError(400, f"malformed {call} request: {exc}") from None
        except ValueError as exc:  # the storage refused the batch before writing anything
            raise NodeError(400, f"{call} refused: {exc}") from None
        return wire.encode({"result": result})

    async def _commit(self, batch: Batch, worker: str | None) -> CommitResult:
        for step in batch.steps:
            if step.execution_id not in batch.fences:
                raise NodeError(400, f"step {step.key!r} of execution {step.execution_id!r} is not fenced: "
                                     "a worker reports steps only of executions it holds")  # fmt: skip
        await self._check_known(list(batch.fences), {r.id for r in batch.executions})
        new = bool(batch.executions)
        result = await self.queue.runtime.committer.commit(batch)
        if new:
            self._wake_pollers()
        if result.refused:
            remote = self.workers.get(worker or "")
            if remote is not None:
                remote.refused_reports += len(result.refused)
            log.warning("dq: refused late reports of worker %s for execution(s) %s: another holder has them",
                        worker, sorted(result.refused))  # fmt: skip
        return result

    async def _check_known(self, ids: list[str], created: set[str]) -> None:
        unknown = [i for i in ids if i not in self._known and i not in created]
        if unknown:
            found = {r.id for r in await self.storage.query(ExecutionQuery(ids=unknown))}
            missing = sorted(set(unknown) - found)
            if missing:
                raise NodeError(404, f"unknown execution(s) {missing}: nothing was written")
            self._remember(found)
        self._remember(created)

    def _remember(self, ids: Any) -> None:
        for eid in ids:
            self._known[eid] = None
        while len(self._known) > _KNOWN_IDS:
            self._known.popitem(last=False)

    async def _claim(self, a: wire.Claim, gone: asyncio.Event) -> wire.Claimed:
        remote = self.workers.get(a.worker_id)
        if remote is None:
            raise NodeError(409, f"worker {a.worker_id!r} is not registered with this node: register first")
        if a.limit < 0 or a.lease_ms <= 0:
            raise NodeError(400, "claim: limit must be >= 0 and lease_ms > 0")
        names = [n for n in (a.job_names if a.job_names is not None else remote.accepted) if n in remote.accepted]
        if not names or a.limit == 0:
            return wire.Claimed([], {})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(a.wait_ms, 0), _MAX_WAIT_MS) / 1000
        while True:
            if a.worker_id in self.lost or a.worker_id not in self.workers or gone.is_set():
                return wire.Claimed([], {})  # lost, gone or stopped: no work until heard from again
            event = self._work
            recs = await self.storage.claim(a.worker_id, limit=a.limit, lease_ms=a.lease_ms,
                                            job_names=names, exclude_jobs=a.exclude_jobs)  # fmt: skip
            left = deadline - loop.time()
            if recs or left <= 0 or self.closing:
                self._remember(r.id for r in recs)
                return wire.Claimed(recs, await self.storage.get_steps_many([r.id for r in recs]))
            due = await self.storage.next_due(names, a.exclude_jobs)
            if due is not None:
                left = min(left, max(0.0, (due - now_ms()) / 1000))
            # Also look again every interval: work made due by another node's
            # clients reaches this node's bus only by polling.
            await wait_event(event, min(left, self.interval_ms / 1000))

    async def _register(self, a: wire.Register) -> wire.Registered:
        if a.protocol != wire.PROTOCOL:
            raise NodeError(400, f"worker protocol {a.protocol} is not this node's ({wire.PROTOCOL}): "
                                 "run the same dq version on node and workers")  # fmt: skip
        if a.capacity < 1:
            raise NodeError(400, f"capacity must be >= 1, got {a.capacity}")
        refused: dict[str, str] = {}
        for job, fp in a.jobs.items():
            mine = self.fingerprints.get(job)
            if mine is None:
                refused[job] = f"the node has no job named {job!r}"
            elif mine != fp:
                refused[job] = (f"the worker's code for job {job!r} differs from the node's "
                                f"(fingerprint {fp} vs {mine}): deploy the same code to both")  # fmt: skip
        accepted = frozenset(a.jobs) - set(refused)
        for job, why in sorted(refused.items()):
            log.error("dq: worker %s refused job %r: %s", a.worker_id, job, why)
        info = {
            "kind": "remote", "host": a.host, "pid": a.pid, "version": a.version,
            "capacity": a.capacity, "url": a.url, "jobs": sorted(accepted), "refused_jobs": refused,
            "node": self.id, "interval_ms": self.interval_ms, "state": "running", "running": 0,
        }  # fmt: skip
        self.workers[a.worker_id] = RemoteWorker(a, accepted, refused, info=info)
        await self.storage.heartbeat(a.worker_id, info)
        log.info("dq: worker %s registered from %s (pid %s, capacity %d)", a.worker_id, a.host, a.pid, a.capacity)
        self._wake_pollers()
        return wire.Registered(self.id, self.interval_ms, sorted(accepted), refused)

    async def _heartbeat(self, a: wire.Heartbeat) -> wire.HeartbeatReply:
        remote = self.workers.get(a.worker_id)
        if remote is None:
            return wire.HeartbeatReply(known=False)
        remote.info.update({k: v for k, v in a.info.items() if k in ("state", "running", "executions")})
        remote.info["refused_reports"] = remote.refused_reports
        remote.info["node"] = self.id
        await self.storage.heartbeat(a.worker_id, remote.info)
        self.lost.discard(a.worker_id)
        key = _LOST_KEY + a.worker_id
        if not await self.storage.get_state([key]):
            return wire.HeartbeatReply()
        await self.storage.commit(Batch(state={key: None}))
        log.warning("dq: lost worker %s is back; it drops the executions that went to others", a.worker_id)
        return wire.HeartbeatReply(lost=True)

    async def _remove_worker(self, a: wire.WorkerId) -> None:
        self.workers.pop(a.worker_id, None)
        await self.storage.remove_worker(a.worker_id)

    async def _now(self, _a: wire.NoArgs) -> int:
        return await self.storage.now()

    async def _renew(self, a: wire.Renew) -> dict[str, str | None]:
        return await self.storage.renew(a.worker_id, a.ids, a.lease_ms)

    async def _reclaim(self, a: wire.Reclaim) -> list[str]:
        ids = await self.storage.reclaim(a.dead_workers)
        if ids:
            self._wake_pollers()
        return ids

    async def _get_execution(self, a: wire.ById) -> Any:
        return await self.storage.get_execution(a.execution_id)

    async def _query(self, a: wire.Query) -> Any:
        return await self.storage.query(a.query)

    async def _count(self, a: wire.Query) -> Any:
        return await self.storage.count(a.query)

    async def _get_steps(self, a: wire.ById) -> Any:
        return await self.storage.get_steps(a.execution_id)

    async def _read_events(self, a: wire.ReadEvents) -> Any:
        return await self.storage.read_events(a.after_seq, limit=a.limit, execution_id=a.execution_id)

    async def _last_event_seq(self, _a: wire.NoArgs) -> int:
        return await self.storage.last_event_seq()

    async def _next_due(self, a: wire.NextDue) -> int | None:
        return await self.storage.next_due(a.job_names, a.exclude_jobs)

    async def _read_messages(self, a: wire.ReadMessages) -> Any:
        return await self.storage.read_messages(a.pipe, a.after_seq, limit=a.limit)

    async def _last_message_seq(self, a: wire.Pipe) -> int:
        return await self.storage.last_message_seq(a.pipe)

    async def _get_state(self, a: wire.Keys) -> Any:
        return await self.storage.get_state(a.keys)

    async def _list_state(self, a: wire.Prefix) -> Any:
        return await self.storage.list_state(a.prefix)

    async def _list_workers(self, _a: wire.NoArgs) -> Any:
        return await self.storage.list_workers()

    # -- new work and lost workers -----------------------------------------------------
    def _wake_pollers(self) -> None:
        self._work.set()
        self._work = asyncio.Event()

    async def _follow_work(self) -> None:
        """Wake long-polling claims when the node's event log says work became due."""
        while True:
            try:
                async with self.queue.bus.subscribe() as sub:
                    async for ev in sub:
                        if ev.type in _NEW_WORK:
                            self._wake_pollers()
                        elif ev.type == _REQUESTED and ev.execution_id is not None:
                            try:
                                await self._push_request(ev.execution_id)
                            except Exception as exc:  # the worker's next renewal brings it anyway
                                log.warning("dq: could not look up the holder of %s to push a request: %s",
                                            ev.execution_id, exc)  # fmt: skip
            except Exception as exc:
                log.warning("dq: node event follower failed (restarting): %s", exc)
            await asyncio.sleep(self.interval_ms / 1000)

    async def _push_request(self, execution_id: str) -> None:
        """Tell the worker holding `execution_id` (if it is one of this node's, with an
        endpoint) that a pause or cancel awaits it."""
        rec = await self.storage.get_execution(execution_id)
        if rec is None or rec.status != "running" or rec.worker_id is None:
            return
        remote = self.workers.get(rec.worker_id)
        if remote is None or remote.registration.url is None or rec.worker_id in self.lost:
            return
        self.pusher.interrupt(remote.registration.url, [execution_id])

    async def _monitor(self) -> None:
        while True:
            try:
                await self.storage.heartbeat(self.id, self.describe())
                await self.find_lost()
            except Exception as exc:
                log.warning("dq: worker monitor failed: %s", exc)
            await asyncio.sleep(self.interval_ms / 1000)

    def describe(self) -> dict[str, Any]:
        return {"kind": "node", "host": socket.gethostname(), "pid": os.getpid(), "url": self.url,
                "version": wire.dq_version(),
                "interval_ms": self.interval_ms, "local_work": self.local_work,
                "state": "running", "workers": len(self.workers)}  # fmt: skip

    async def find_lost(self) -> list[str]:
        """Mark remote workers silent for MISSED_BEATS intervals lost and reclaim their executions."""
        now = await self.storage.now()
        limit = MISSED_BEATS * self.interval_ms
        lost = []
        for w in await self.storage.list_workers():
            info = w.get("info") or {}
            silent_ms = now - int(w.get("last_heartbeat") or 0)
            if info.get("kind") != "remote" or silent_ms <= limit:
                continue
            key = _LOST_KEY + w["id"]
            if silent_ms > FORGET_AFTER_MS:
                await self.storage.remove_worker(w["id"])
                await self.storage.commit(Batch(state={key: None}))
                continue
            # Once per silence, by one node: the flag is set only where it was absent.
            result = await self.storage.commit(Batch(state={key: now}, expect={key: None}))
            if result.conflict:
                continue
            self.lost.add(w["id"])
            ids = await self.storage.reclaim([w["id"]])
            lost.append(w["id"])
            log.warning("dq: worker %s is lost (no heartbeat for %d ms): %d execution(s) handed to others",
                        w["id"], now - int(w.get("last_heartbeat") or 0), len(ids))  # fmt: skip
            if ids:
                self.queue.runtime.kick()
                self._wake_pollers()
        return lost
