"""The Redis adapter (redis-py asyncio): Lua scripts for every atomic change.

Key layout, all under `{prefix}:` (default `dq:`):

- `meta` hash: created_at, schema, epoch (the flush detector, see redis_scripts).
- `exec:{id}` hash per execution: one field per ExecutionRecord field; ints as
  decimal text, input/output/error as JSON, None as an absent field.
- `ids` zset (all scores 0, so ordered by id = by creation for ULIDs);
  `status:{status}` and `job:{name}` sets narrow queries and counts.
- `at:created`, `at:started`, `at:completed` zsets scored by those times, and
  `children:{id}`, `tree:{id}`, `replays:{id}` sets (by parent_id, root_id,
  replay_of): time windows and trees read their own rows (schema 2; a schema 1
  prefix is indexed when a schema 2 dq first opens it).
- `pending:{priority}:{job}` zset per lane of CLAIMABLE executions scored by
  run_at, plus `lanes` (the lanes present, scored by priority): claim order
  and job filters without a backlog scan (see redis_scripts.CLAIM).
- `running` zset scored by lease_until (reclaim).
- `steps:{id}` hash: step key -> JSON. `events` hash: seq -> JSON, and
  `events:{id}` zset of that execution's seqs; `seq:events` the counter.
- `pipe:{name}` zset: score seq, member "seq JSON"; `seq:messages` the counter.
- `state` hash: key -> JSON, and `state-keys` zset of its keys (all scores 0):
  `list_state(prefix)` reads the prefix's range of it (schema 3), not every key (a
  slot's line is one key per waiter). `workers` hash: id -> info JSON, `heartbeats`
  zset: id scored by the server time of its last heartbeat.
- `wakeup` pub/sub channel: published when a commit makes an execution
  CLAIMABLE or adds pipe messages, and when reclaim frees executions.

Times come from the Redis server clock (TIME), inside the scripts for leases.
The scripts name keys they were not passed, so this targets a single Redis
(or a replica set), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import json.encoder
import logging
import operator
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import DqError, StorageBusyError, StorageLostError
from . import redis_scripts as lua
from .base import (
    STATUSES,
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
    exception_chain,
    positive_bound,
)
from .query import finish_aggregate, fold, matches, only_status_and_job, prefix_end, sort_and_page

log = logging.getLogger(__name__)

#: A time range for `_narrow`: (field, lowest, highest), inclusive.
_Window = tuple[str, int, int]
#: What `query.fold` and a count read of every record, id first (`_fetch` relies on it).
_FOLD_FIELDS = ("id", "job_name", "status", "created_at", "started_at", "completed_at")
#: The fields `query.matches` reads only when the query filters on them.
_OPTIONAL_FIELDS = {"retry_count": ("retry_count", "retry_count_less_than", "retry_count_greater_than"),
                    "parent_id": ("parent_id",), "root_id": ("root_id",), "replay_of": ("replay_of",),
                    "idempotency_key": ("idempotency_key",), "input": ("input",)}  # fmt: skip


def _filter_fields(query: ExecutionQuery) -> tuple[str, ...]:
    """The fields a count or an aggregate of `query` reads: the fewer, the less to
    transfer and decode per execution."""
    extra = (f for f, filters in _OPTIONAL_FIELDS.items() if any(getattr(query, n) is not None for n in filters))
    return (*_FOLD_FIELDS, *extra)

SCHEMA_VERSION = 3
#: Fields the schema 2 indexes hold, and their keys (see the module docstring).
_TIME_KEYS = {"created_at": "created", "started_at": "started", "completed_at": "completed"}
_LINK_KEYS = {"parent_id": "children", "root_id": "tree", "replay_of": "replays"}
_CHUNK = 500  # executions fetched per round trip when a query scans

_INT_FIELDS = frozenset(
    {"retry_count", "priority", "created_at", "run_at", "started_at", "completed_at",
     "lease_until", "token"}
)  # fmt: skip
_JSON_FIELDS = frozenset({"input", "output", "error"})
_EXEC_FIELDS = tuple(f.name for f in dataclasses.fields(ExecutionRecord))
_STR_FIELDS = frozenset(_EXEC_FIELDS) - _INT_FIELDS - _JSON_FIELDS
#: A step is stored as a JSON list of these, in this order (new fields go last).
_STEP_FIELDS = tuple(
    f.name for f in dataclasses.fields(StepRecord) if f.name not in ("execution_id", "key")
)



class RedisConfigError(DqError, RuntimeError):
    """The Redis server is configured in a way that would lose dq's data."""


def _make_dumps() -> Callable[[Any], str]:
    """Compact ASCII JSON (so never a raw newline, see redis_scripts.COMMIT). One C
    encoder is reused: json.dumps builds a new one per call, a third of the cost."""
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:
        return json.JSONEncoder(separators=(",", ":")).encode

    def default(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    encoder = c_make_encoder(
        None, default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def dumps(value: Any) -> str:
        return "".join(encoder(value, 0))

    return dumps


_dumps = _make_dumps()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_step_values = operator.attrgetter(*_STEP_FIELDS)


def _encode_field(name: str, value: Any) -> str | None:
    if name not in _EXEC_FIELDS:
        raise ValueError(f"ExecutionRecord has no field {name!r}")
    if value is None:
        return None
    if name in _JSON_FIELDS:
        return _dumps(value)
    if name in _INT_FIELDS:
        return str(int(value))
    return str(value)


def _decode_execution(fields: Mapping[str, str]) -> ExecutionRecord:
    kw: dict[str, Any] = {}
    for name, text in fields.items():
        if name in _INT_FIELDS:
            kw[name] = int(text)
        elif name in _JSON_FIELDS:
            kw[name] = json.loads(text)
        elif name in _STR_FIELDS:
            kw[name] = text
    return ExecutionRecord(**kw)


def _steps(execution_id: str, rows: Mapping[Any, Any]) -> list[StepRecord]:
    """An execution's step hash (key -> JSON body) as its history, in `seq` order."""
    steps = [
        StepRecord(execution_id, str(key), **dict(zip(_STEP_FIELDS, json.loads(body), strict=False)))
        for key, body in rows.items()
    ]
    steps.sort(key=lambda s: s.seq)
    return steps


def _pairs(flat: Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)


def _job_filters(job_names: Sequence[str] | None, exclude_jobs: Sequence[str]) -> str:
    only = None if job_names is None else list(job_names)
    return _dumps({"only": only, "exclude": list(exclude_jobs)})


class _BoundedPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool: a call waits for a free connection (back-pressure)
    instead of failing at once; past the wait timeout, dq's StorageBusyError."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if not isinstance(exc.__cause__, TimeoutError):
                raise
            raise StorageBusyError(
                f"redis storage: no connection became free within {self.timeout} s "
                f"(max_connections={self.max_connections}); nothing was sent"
            ) from exc


class RedisStorage(Storage):
    kind = "redis"
    durable = True
    #: Connections this storage opens at most (the pub/sub listener has its own),
    #: and how long a call waits for one before raising StorageBusyError.
    max_connections = 32
    acquire_timeout_s = 30.0

    def __init__(
        self, url: str, *, prefix: str = "dq", max_connections: int | None = None, acquire_timeout_s: float | None = None
    ) -> None:
        self._url = url
        self._prefix = prefix
        self.max_connections = positive_bound(max_connections, "max_connections", self.max_connections)
        self.acquire_timeout_s = positive_bound(acquire_timeout_s, "acquire_timeout", self.acquire_timeout_s)
        self._epoch = ""
        self._client: aioredis.Redis | None = None
        self._sintercard = True  # Redis >= 7
        self._scripts: dict[str, AsyncScript] = {}
        self._callbacks: list[Callable[[], None]] = []
        #: Our own commits' wakeups carry this, so that our listener can skip them (the
        #: engine wakes itself in-process; as on PostgreSQL).
        self._instance = secrets.token_hex(8)
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        #: Set while the wakeup subscription is live (tests wait on it).
        self.subscribed = asyncio.Event()

    def _k(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisStorage is not open: call `await storage.open()` first")
        return self._client

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 10,
            "client_name": f"dq-{self._prefix}",
        }
        # No automatic retries (also redis-py 8's default, made explicit): a retried
        # COMMIT whose first attempt did run would append its events twice or fail on
        # its own inserts, a retried CLAIM would strand what the first one took. A
        # connection error from a write means "outcome unknown", for the caller to judge.
        no_retry = Retry(NoBackoff(), 0)
        pool = _BoundedPool.from_url(
            self._url, max_connections=self.max_connections, timeout=self.acquire_timeout_s,
            retry=no_retry, **options,
        )  # fmt: skip
        client = aioredis.Redis(connection_pool=pool, retry=no_retry)
        client.auto_close_connection_pool = True  # it owns the pool: closing it closes the pool
        try:
            await self._check_eviction_policy(client)
            self._sintercard = await _server_version(client) >= (7, 0)
            self._scripts = {
                name: client.register_script(getattr(lua, name))
                for name in ("OPEN", "COMMIT", "CLAIM", "RENEW", "RECLAIM", "HEARTBEAT",
                             "READ_EVENTS", "NEXT_DUE", "DELETE", "FETCH")
            }  # fmt: skip
            schema, epoch = await self._scripts["OPEN"](
                args=[self._prefix, SCHEMA_VERSION, secrets.token_hex(8)]
            )
            if int(schema) > SCHEMA_VERSION:
                raise DqError(
                    f"Redis prefix {self._prefix!r} holds dq schema {schema}, newer than this "
                    f"dq's {SCHEMA_VERSION}; upgrade dq or use another prefix"
                )
            if int(schema) < 2:
                await self._index_schema_1(client)
            if int(schema) < 3:
                await self._index_state_keys(client)
            if int(schema) < SCHEMA_VERSION:
                await client.hset(self._k("meta"), "schema", SCHEMA_VERSION)
        except BaseException:
            await client.aclose()
            raise
        self._client, self._epoch = client, str(epoch)
        if self._callbacks and self._listener is None:
            self._start_listener()

    async def _index_schema_1(self, client: aioredis.Redis) -> None:
        """Fill the schema 2 indexes for executions written by a schema 1 dq.
        Idempotent (ZADD, SADD): a concurrent opener doing the same is harmless."""
        fields = [*_TIME_KEYS, *_LINK_KEYS]
        after = "-"
        while True:
            ids = cast(list[str], await client.zrangebylex(self._k("ids"), after, "+", start=0, num=1000))
            if not ids:
                break
            read = client.pipeline(transaction=False)
            for eid in ids:
                read.hmget(self._k("exec", eid), fields)
            write = client.pipeline(transaction=False)
            for eid, values in zip(ids, await read.execute(), strict=True):
                for name, value in zip(fields, values, strict=True):
                    if value is None:
                        continue
                    if name in _TIME_KEYS:
                        write.zadd(self._k("at", _TIME_KEYS[name]), {eid: int(value)})
                    else:
                        write.sadd(self._k(_LINK_KEYS[name], value), eid)
            await write.execute()
            after = "(" + ids[-1]

    async def _index_state_keys(self, client: aioredis.Redis) -> None:
        """Fill schema 3's `state-keys` from the state a schema 2 (or older) dq wrote.
        Idempotent (ZADD)."""
        keys: list[str] = []
        async for key, _value in client.hscan_iter(self._k("state"), count=1000):
            keys.append(str(key))
            if len(keys) == 1000:
                await client.zadd(self._k("state-keys"), dict.fromkeys(keys, 0))
                keys = []
        if keys:
            await client.zadd(self._k("state-keys"), dict.fromkeys(keys, 0))

    async def _check_eviction_policy(self, client: aioredis.Redis) -> None:
        try:
            config = await client.config_get("maxmemory-policy")
        except ResponseError as exc:  # CONFIG renamed, disabled or denied by an ACL
            log.warning(
                "dq: could not read Redis maxmemory-policy (%s); make sure it is noeviction "
                "or volatile-*, or Redis may silently drop dq's data under memory pressure",
                exc,
            )
            return
        policy = str(config.get("maxmemory-policy", ""))
        # allkeys-* policies evict any key under memory pressure: an execution, a step
        # or a lease could vanish silently. volatile-* policies only evict keys that
        # have a TTL and dq sets none, so for dq they behave like noeviction (writes
        # fail with OOM instead of losing data); they are accepted.
        if policy.startswith("allkeys-"):
            raise RedisConfigError(
                f"Redis maxmemory-policy is {policy!r}: Redis would evict dq's executions "
                "under memory pressure. Set it to 'noeviction' (CONFIG SET maxmemory-policy "
                "noeviction, and in redis.conf), or use a Redis instance of its own for dq"
            )

    async def aclose(self) -> None:
        if self._listener is not None:
            task, self._listener = self._listener, None
            self._closing = True
            # Cancel until it ends: a cancellation that lands as a socket call
            # completes can be swallowed inside redis-py (asyncio.wait_for on 3.11).
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            if not task.cancelled() and task.exception() is not None:
                log.warning("dq: the Redis wakeup listener failed: %r", task.exception())
            self._closing = False
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def is_unavailable(self, exc: BaseException) -> bool:
        # redis-py's ConnectionError (refused, reset, BusyLoadingError while a restarted
        # server loads its data) and TimeoutError are not the builtin OSError family.
        return any(
            isinstance(e, RedisConnectionError | RedisTimeoutError | OSError)
            for e in exception_chain(exc)
        )

    async def now(self) -> int:
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _call(self, name: str, *args: Any) -> Any:
        self._redis  # noqa: B018 - raises when not open
        try:
            return await self._scripts[name](args=[self._prefix, self._epoch, *args])
        except ResponseError as exc:
            message = str(exc)
            if message.startswith(lua.LOST):
                raise StorageLostError(
                    f"dq's data in Redis ({self._url}, prefix {self._prefix!r}) is gone: "
                    f"{message.removeprefix(lua.LOST).strip()} (FLUSHALL/FLUSHDB, a restart "
                    "without persistence or a failover to an empty replica). Executions, "
                    "steps and events written before are lost; restart the process to "
                    "start over, and enable Redis persistence (appendonly yes)"
                ) from exc
            if message.startswith(lua.DUPLICATE):
                eid = message.removeprefix(lua.DUPLICATE).strip()
                raise ValueError(f"execution {eid!r} already exists") from exc
            raise

    # -- writes ---------------------------------------------------------------------

    async def commit(self, batch: Batch) -> CommitResult:
        applied, refused, controls, first, *conflict = await self._call("COMMIT", *self._encode_batch(batch, self._instance))
        if conflict and int(conflict[0]):
            return CommitResult(conflict=True)
        result = CommitResult(
            applied=[bool(a) for a in applied],
            refused=set(refused),
            controls=dict(_pairs(controls)),
        )
        seq = int(first)
        for ev in batch.events:  # the batch's records are handed over: no copies
            if ev.execution_id is None or ev.execution_id not in result.refused:
                ev.seq = seq
                result.events.append(ev)
                seq += 1
        return result

    @staticmethod
    def _encode_batch(batch: Batch, instance: str) -> list[str]:
        """COMMIT's arguments after prefix and epoch (see redis_scripts.COMMIT); `instance`
        is what its wakeup publishes (this handle's listener skips its own)."""
        bodies: list[str] = []

        def body(text: str) -> int:
            bodies.append(text)
            return len(bodies)

        def fields(values: Mapping[str, Any], *, keep_none: bool) -> dict[str, str | int | None]:
            out: dict[str, str | int | None] = {}
            for name, value in values.items():
                text = _encode_field(name, value)
                if text is not None:
                    out[name] = body(text) if name in _JSON_FIELDS else text
                elif keep_none:
                    out[name] = None
            return out

        step_keys: list[str] = []
        for s in batch.steps:
            step_keys += (s.execution_id, s.key)
        step_bodies = "\n".join(_dumps(_step_values(s)) for s in batch.steps)
        event_bodies = "\n".join(
            _dumps((e.execution_id, e.job_name, e.type, e.data, e.at)) for e in batch.events
        )
        fences: list[str] = []
        for eid, token in batch.fences.items():
            fences += (eid, str(token))
        shape = _dumps({
            "f": fences,
            "x": [
                [r.id, fields({n: getattr(r, n) for n in _EXEC_FIELDS}, keep_none=False)]
                for r in batch.executions
            ],
            "u": [
                [u.id, fields(u.fields, keep_none=True),
                 None if u.token is None else str(u.token),
                 None if u.statuses is None else list(u.statuses)]
                for u in batch.updates
            ],
            "s": step_keys,
            "e": [e.execution_id for e in batch.events],
            "m": [[m.pipe, body(_dumps([m.data, m.at]))] for m in batch.messages],
            # State is stored canonically (sorted keys) so that `expect` compares text in Lua.
            "k": [[k, None if v is None else body(_canonical(v))] for k, v in batch.state.items()],
            "c": [[k, None if v is None else _canonical(v)] for k, v in batch.expect.items()],
            "w": instance,
        })  # fmt: skip
        return [shape, "\n".join(bodies), step_bodies, event_bodies]

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        job_names: Sequence[str] | None = None,
        exclude_jobs: Sequence[str] = (),
    ) -> list[ExecutionRecord]:
        if limit <= 0:
            return []
        filters = _job_filters(job_names, exclude_jobs)
        rows = await self._call("CLAIM", worker_id, int(limit), int(lease_ms), filters)
        return [_decode_execution(dict(_pairs(row))) for row in rows]

    async def renew(
        self, worker_id: str, ids: Sequence[str], lease_ms: int
    ) -> dict[str, str | None]:
        if not ids:
            return {}
        return dict(_pairs(await self._call("RENEW", worker_id, lease_ms, *ids)))

    async def reclaim(self, dead_workers: Sequence[str] = ()) -> list[str]:
        return [str(i) for i in await self._call("RECLAIM", *dead_workers)]

    # -- executions -----------------------------------------------------------------

    async def delete_executions(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return [str(i) for i in await self._call("DELETE", *dict.fromkeys(ids))]

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        fields = await self._redis.hgetall(self._k("exec", execution_id))
        return _decode_execution(cast(dict[str, str], fields)) if fields else None

    async def _fetch(self, ids: Sequence[str], fields: Sequence[str] = ()) -> list[ExecutionRecord]:
        """The executions of `ids` that exist, whole or (`fields`, with id) only those
        fields: counts and aggregates skip the inputs and outputs they never read."""
        if not ids:
            return []
        rows = await self._scripts["FETCH"](args=[self._prefix, self._epoch, len(fields), *fields, *ids])
        if not fields:
            return [_decode_execution(dict(_pairs(row))) for row in rows if row]
        return [
            _decode_execution({k: v for k, v in zip(fields, row, strict=True) if v is not None})
            for row in rows
            if row[0] is not None
        ]

    async def _narrow(self, q: ExecutionQuery, window: _Window | None = None) -> set[str] | None:
        """A superset of the matching ids from the indexes, read from the smallest
        one the query names (sizes first, in one round trip); None: every id.
        `window` (field, low, high), inclusive, narrows by one more time range."""
        if q.ids is not None:
            return set(q.ids)
        unions: list[list[str]] = []  # each: the union of these sets
        if q.statuses is not None:
            unions.append([self._k("status", s) for s in q.statuses])
        if q.job_names is not None:
            unions.append([self._k("job", j) for j in q.job_names])
        for field, key in _LINK_KEYS.items():
            if getattr(q, field) is not None:
                unions.append([self._k(key, getattr(q, field))])
        ranges: list[tuple[str, str, str]] = []  # each: a zset and its score bounds
        for field, key in _TIME_KEYS.items():
            after, before = getattr(q, field.replace("_at", "_after")), getattr(q, field.replace("_at", "_before"))
            if after is not None or before is not None:
                low = "-inf" if after is None else f"({after}"
                ranges.append((self._k("at", key), low, "+inf" if before is None else f"({before}"))
        if window is not None:
            ranges.append((self._k("at", _TIME_KEYS[window[0]]), str(window[1]), str(window[2])))
        if not unions and not ranges:
            return None
        if any(not keys for keys in unions):
            return set()
        best = 0
        if len(unions) + len(ranges) > 1:  # one index named: no sizes to compare
            pipe = self._redis.pipeline(transaction=False)
            for keys in unions:
                for key in keys:
                    pipe.scard(key)
            for key, low, high in ranges:
                pipe.zcount(key, low, high)
            sizes = iter(await pipe.execute())
            costs = [sum(next(sizes) for _ in keys) for keys in unions] + [next(sizes) for _ in ranges]
            best = min(range(len(costs)), key=costs.__getitem__)
        if best < len(unions):
            return {str(i) for i in await self._redis.sunion(unions[best])}
        key, low, high = ranges[best - len(unions)]
        return {str(i) for i in await self._redis.zrangebyscore(key, low, high)}

    async def _scan(
        self, q: ExecutionQuery, *, paging: bool, window: _Window | None = None, fields: Sequence[str] = ()
    ) -> AsyncIterator[list[ExecutionRecord]]:
        """Candidate records in the query's order, in chunks (a superset of the matches);
        with `fields`, records holding only those (see `_fetch`)."""
        newest = q.order == "newest"
        cursor = q.cursor if paging else None
        narrowed = await self._narrow(q, window)
        if narrowed is not None:
            ordered = sorted(narrowed, reverse=newest)
            if cursor is not None:
                ordered = [i for i in ordered if (i < cursor if newest else i > cursor)]
            for start in range(0, len(ordered), _CHUNK):
                yield await self._fetch(ordered[start : start + _CHUNK], fields)
            return
        while True:  # keyset walk over the ids zset, robust against concurrent inserts
            bound = "(" + cursor if cursor is not None else None
            if newest:
                page = await self._redis.zrevrangebylex(
                    self._k("ids"), bound or "+", "-", start=0, num=_CHUNK
                )
            else:
                page = await self._redis.zrangebylex(
                    self._k("ids"), bound or "-", "+", start=0, num=_CHUNK
                )
            if not page:
                return
            yield await self._fetch(cast(list[str], page), fields)
            if len(page) < _CHUNK:
                return
            cursor = str(page[-1])

    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        want = None if query.limit is None else query.offset + query.limit
        found: list[ExecutionRecord] = []
        async for chunk in self._scan(query, paging=True):
            found.extend(r for r in chunk if matches(r, query))
            if want is not None and len(found) >= want:
                break
        return sort_and_page(found, query)

    async def count(self, query: ExecutionQuery) -> dict[str, int]:
        if only_status_and_job(query) and (query.job_names is None or self._sintercard):
            return await self._count_from_indexes(query)
        out: dict[str, int] = {}
        async for chunk in self._scan(query, paging=False, fields=_filter_fields(query)):
            for r in chunk:
                if matches(r, query, paging=False):
                    out[r.status] = out.get(r.status, 0) + 1
        return out

    async def aggregate(self, query: ExecutionQuery, buckets: TimeBuckets, *, durations: bool = False) -> Aggregate:
        """Folded here, chunk by chunk, as `count` does for filters the indexes do not
        answer: the caller gets counts, never the records."""
        agg = Aggregate()
        oldest_first = dataclasses.replace(query, order="oldest", cursor=None, limit=None, offset=0)
        window = (buckets.field, buckets.start, buckets.end - 1)
        async for chunk in self._scan(oldest_first, paging=False, window=window, fields=_filter_fields(query)):
            fold(chunk, query, buckets, agg, durations=durations)
        return finish_aggregate(agg)

    async def _count_from_indexes(self, q: ExecutionQuery) -> dict[str, int]:
        statuses = list(dict.fromkeys(q.statuses if q.statuses is not None else STATUSES))
        jobs = None if q.job_names is None else list(dict.fromkeys(q.job_names))
        pipe = self._redis.pipeline(transaction=False)
        for s in statuses:
            if jobs is None:
                pipe.scard(self._k("status", s))
            else:  # an execution has one job: the per-job intersections add up
                for j in jobs:
                    pipe.sintercard(2, [self._k("status", s), self._k("job", j)])
        sizes = iter(await pipe.execute())
        out: dict[str, int] = {}
        for s in statuses:
            n = sum(next(sizes) for _ in (jobs if jobs is not None else [None]))
            if n:
                out[s] = n
        return out

    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        return _steps(execution_id, await self._redis.hgetall(self._k("steps", execution_id)))

    async def get_steps_many(self, execution_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """One HGETALL per id, pipelined: one round trip."""
        ids = list(dict.fromkeys(execution_ids))
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for eid in ids:
            pipe.hgetall(self._k("steps", eid))
        return {eid: _steps(eid, rows) for eid, rows in zip(ids, await pipe.execute(), strict=True)}

    # -- events and pipe messages ---------------------------------------------------

    async def read_events(
        self, after_seq: int = 0, *, limit: int = 1000, execution_id: str | None = None
    ) -> list[EventRecord]:
        if limit <= 0:
            return []
        flat = await self._call("READ_EVENTS", int(after_seq), int(limit), execution_id or "")
        out = []
        for seq, body in _pairs(flat):
            eid, job, type_, data, at = json.loads(body)
            out.append(EventRecord(eid, job, type_, data, at, int(seq)))
        return out

    async def last_event_seq(self) -> int:
        return int(await self._redis.get(self._k("seq", "events")) or 0)

    async def next_due(
        self, job_names: Sequence[str] | None = None, exclude_jobs: Sequence[str] = ()
    ) -> int | None:
        due = await self._call("NEXT_DUE", _job_filters(job_names, exclude_jobs))
        return None if due is None else int(due)

    async def read_messages(
        self, pipe: str, after_seq: int = 0, *, limit: int = 1000
    ) -> list[PipeMessage]:
        if limit <= 0:
            return []
        members = await self._redis.zrangebyscore(
            self._k("pipe", pipe), f"({int(after_seq)}", "+inf", start=0, num=limit
        )
        out = []
        for member in members:
            seq, _, body = str(member).partition(" ")
            data, at = json.loads(body)
            out.append(PipeMessage(pipe, data, at, int(seq)))
        return out

    async def last_message_seq(self, pipe: str) -> int:
        last = await self._redis.zrange(self._k("pipe", pipe), -1, -1, withscores=True)
        return int(last[0][1]) if last else 0

    # -- state and workers ----------------------------------------------------------

    async def get_state(self, keys: Sequence[str]) -> dict[str, Any]:
        if not keys:
            return {}
        values = await self._redis.hmget(self._k("state"), list(keys))
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    async def list_state(self, prefix: str) -> dict[str, Any]:
        # The prefix's range of the key index, in byte order: [prefix, prefix_end).
        end = prefix_end(prefix)
        low = "[" + prefix if prefix else "-"
        keys = [str(k) for k in await self._redis.zrangebylex(self._k("state-keys"), low, "+" if end is None else "(" + end)]
        if prefix and end is None:
            keys = [k for k in keys if k.startswith(prefix)]
        out: dict[str, Any] = {}
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            for key, value in zip(chunk, await self._redis.hmget(self._k("state"), chunk), strict=True):
                if value is not None:
                    out[key] = json.loads(value)
        return out

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        await self._call("HEARTBEAT", worker_id, _dumps(info))

    async def list_workers(self) -> list[dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._k("workers"))
        pipe.zrange(self._k("heartbeats"), 0, -1, withscores=True)
        infos, beats = await pipe.execute()
        seen = {str(w): int(at) for w, at in beats}
        return [
            {"id": wid, "info": json.loads(info), "last_heartbeat": seen.get(wid, 0)}
            for wid, info in infos.items()
        ]

    async def remove_worker(self, worker_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._k("workers"), worker_id)
        pipe.zrem(self._k("heartbeats"), worker_id)
        await pipe.execute()

    # -- wakeups --------------------------------------------------------------------

    def on_wakeup(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._client is not None and self._listener is None:
            self._start_listener()

    def _start_listener(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(), name=f"dq-redis-wakeup:{self._prefix}"
        )

    def _fire(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("dq: a storage wakeup callback raised")

    async def _listen(self) -> None:
        """Subscribe to `{prefix}:wakeup`, and fire once when subscribed: wakeups
        published before (while starting, or while a dropped connection was being
        re-established with backoff) were missed."""
        delay_s = 0.05
        while not self._closing:
            # A client of its own without retries: a drop surfaces here, not inside redis-py.
            client = aioredis.Redis.from_url(
                self._url, decode_responses=True, retry=Retry(NoBackoff(), 0),
                client_name=f"dq-wakeup-{self._prefix}",
            )  # fmt: skip
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._k("wakeup"))
                self._fire()
                delay_s = 0.05
                self.subscribed.set()
                while not self._closing:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()  # a silent dead connection fails here
                    elif message.get("type") == "message" and message.get("data") != self._instance:
                        self._fire()
            except (RedisError, OSError) as exc:
                log.warning(
                    "dq: Redis wakeup subscription lost (%s); reconnecting in %.2fs", exc, delay_s
                )
            finally:
                self.subscribed.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)


async def _server_version(client: aioredis.Redis) -> tuple[int, ...]:
    try:
        info = await client.info("server")
        return tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
    except (RedisError, KeyError, ValueError):  # INFO denied, or an unusual server
        return (0,)
