"""A live stream's client as the hub sees it, and the ticks it is fed.

A client is one open `/live` stream: the topics its page follows, the event seq
it has seen, and for the executions list its filters and the rows it shows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dq.engine.storage.base import ExecutionQuery
from dq.engine.storage.query import matches

from .filters import Filters
from .live import Message


@dataclass(slots=True)
class Tick:
    seq: int
    messages: list[Message]
    #: The SSE bytes for each set of topics (and rows), encoded once and shared by every client of it.
    encoded: dict[object, bytes] = field(default_factory=dict)
    #: The executions this tick's events touched: a list page resuming across the tick
    #: gets the rows it shows among them (the tick rendered only the rows shown then).
    changed: tuple[str, ...] = ()


@dataclass(eq=False)
class Client:
    topics: frozenset[str]
    after: int
    filters: Filters | None = None
    queue: asyncio.Queue[Tick | str | None] = field(default_factory=asyncio.Queue)
    new_count: int = 0
    #: The rows a list page shows: exactly (`shown`, known from a resync), or the id range
    #: of its rows (`span`, from the page's stream URL); neither: every row.
    shown: set[str] | None = None
    span: tuple[str, str] | None = None
    _query: ExecutionQuery | None = None

    def wants(self, msg: Message) -> bool:
        return msg.topic in self.topics and not (msg.append and msg.seq <= self.after) and (not msg.key or self.shows(msg.key))

    def shows(self, execution_id: str) -> bool:
        if self.shown is not None:
            return execution_id in self.shown
        if self.span is not None:
            return self.span[0] <= execution_id <= self.span[1]
        return True

    @property
    def query(self) -> ExecutionQuery | None:
        if self._query is None and self.filters is not None:
            self._query = self.filters.query()
        return self._query


def filtered(client: Client) -> bool:
    """Whether the client's list announces only some created executions (it needs their records)."""
    f = client.filters
    return f is not None and f.active and not (f.cursor or f.before)


def new_count(client: Client, msg: Message) -> int:
    """How many of the executions `msg` announces belong to the client's list (no storage query)."""
    f = client.filters
    if f is None or f.cursor or f.before:  # a page of older rows announces nothing
        return 0
    fresh = msg.created if msg.created[0][0] > client.after else [c for c in msg.created if c[0] > client.after]
    if not f.active:
        return len(fresh)
    query = client.query
    n = 0
    for _, rec in fresh:
        try:
            n += rec is not None and query is not None and matches(rec, query, paging=False)
        except ValueError:
            pass
    return n
