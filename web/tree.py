"""An execution's descendants with their steps and events: the nested waterfall's data.

One query finds the descendants (by `root_id`, indexed), then each one's steps
and events are read; a descendant that ended keeps what was read before (`known`),
so a live page re-reads only the executions still running. At most
`MAX_NODES` descendants are loaded: deeper or wider trees end in a link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dq.engine.storage.base import (
    TERMINAL,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    StepRecord,
    Storage,
)

from .views import read_all_events

MAX_NODES = 100


@dataclass(slots=True)
class Node:
    rec: ExecutionRecord
    steps: list[StepRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)


async def load_tree(
    storage: Storage, rec: ExecutionRecord, known: Mapping[str, Node] | None = None
) -> dict[str, Node]:
    """Every descendant of `rec` (children, their children...) by id, up to MAX_NODES."""
    root = rec.root_id or rec.id
    found = await storage.query(ExecutionQuery(root_id=root, order="oldest", limit=MAX_NODES * 4))
    by_parent: dict[str, list[ExecutionRecord]] = {}
    for r in found:
        if r.parent_id:
            by_parent.setdefault(r.parent_id, []).append(r)
    out: dict[str, Node] = {}
    todo = list(by_parent.get(rec.id, []))
    while todo and len(out) < MAX_NODES:
        child = todo.pop(0)
        old = (known or {}).get(child.id)
        if old is not None and old.rec.status in TERMINAL and old.rec.completed_at == child.completed_at:
            out[child.id] = old
        else:
            steps = await storage.get_steps(child.id)
            events = await read_all_events(storage, child.id)
            out[child.id] = Node(child, steps, events)
        todo.extend(by_parent.get(child.id, []))
    return out
