"""Which queued batches share one transaction (`take_group`), which may commit beside
groups still in flight (`take_beside`, see `Committer`), and merging them."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from .storage.base import Batch, CommitResult

Item = tuple[Batch, "asyncio.Future[CommitResult] | None"]


def take_group(
    queue: list[Item],
) -> tuple[list[Item], list[Item]]:
    """The longest prefix whose fences agree (a stale and a fresh holder of one
    execution must not share a transaction, or the fresh one would be refused)."""
    fences: dict[str, int] = {}
    touched: set[str] = set()  # state keys written or expected so far
    expected: set[str] = set()
    written: dict[str, object] = {}  # state keys written so far: the last value
    for i, (batch, _) in enumerate(queue):
        # Conditional batches share the transaction (a conflict: see _commit_group) as
        # long as none touches a state key that another batch of the group touches,
        # except to expect exactly what an earlier one writes (the admission ledger's
        # next round, decided on the one before): that is implied, it chains on.
        if batch.state or batch.expect:  # most batches have neither: no sets built
            chained = {k for k, v in batch.expect.items() if k in written and written[k] == v}
            keys = (set(batch.state) | set(batch.expect)) - chained
            if keys & (touched if batch.expect else expected):
                return queue[:i], queue[i:]
            touched |= keys | chained
            expected |= set(batch.expect) - chained
            written.update(batch.state)
        for eid, token in batch.fences.items():
            if fences.setdefault(eid, token) != token:
                return queue[:i], queue[i:]
    return queue, []


def own(batch: Batch) -> Collection[str] | None:
    """The executions `batch` touches, when it touches only executions it fences (and
    new ones it creates, with their events): nothing another batch holds a lock on or
    numbers in order with it. None: it may touch anything (see `Committer`)."""
    if batch.state or batch.expect or batch.messages or not batch.fences:
        return None
    fences = batch.fences
    for u in batch.updates:
        if u.id not in fences:
            return None
    for st in batch.steps:
        if st.execution_id not in fences:
            return None
    if batch.executions:
        mine = {*fences, *(rec.id for rec in batch.executions)}
        return mine if all(ev.execution_id in mine for ev in batch.events) else None
    for ev in batch.events:
        if ev.execution_id not in fences:
            return None
    return fences.keys()


def touched(items: list[Item]) -> set[str] | None:
    """What a group touches (`_own` of each batch), or None if any batch may touch anything."""
    out: set[str] = set()
    for batch, _ in items:
        ids = own(batch)
        if ids is None:
            return None
        out.update(ids)
    return out


def take_beside(queue: list[Item], busy: set[str]) -> tuple[list[Item], list[Item], set[str]]:
    """What may commit beside groups in flight touching `busy`, in queue order: each
    batch that touches only its own executions (`own`), none of them busy nor
    touched by a batch left behind before it (an execution's writes keep their
    order), its fences agreeing with the group's. The first batch that may touch
    anything ends the scan: it and all after it wait. Returns the group, the rest
    (in order), and what the group touches."""
    fences: dict[str, int] = {}
    touched: set[str] = set()
    blocked = busy  # copied before it grows
    taken: list[Item] = []
    left: list[Item] = []
    for i, item in enumerate(queue):
        batch = item[0]
        ids = own(batch)
        if ids is None:
            left.extend(queue[i:])
            break
        if blocked.isdisjoint(ids) and agrees(fences, batch.fences):
            fences.update(batch.fences)
            touched.update(ids)
            taken.append(item)
            continue
        if blocked is busy:
            blocked = set(busy)
        blocked.update(ids)
        left.append(item)
    return taken, left, touched


def agrees(fences: dict[str, int], more: dict[str, int]) -> bool:
    """No execution fenced in both with different tokens (a stale and a fresh holder of
    one execution must not share a transaction, or the fresh one would be refused)."""
    return all(fences.get(eid, token) == token for eid, token in more.items())


def extend(into: Batch, b: Batch) -> bool:
    """Append `b`'s parts to `into` (a fire-and-forget send's batch, which nobody reads
    again), unless the two fence one execution with different tokens (`agrees`): False
    then, and `into` is unchanged."""
    if not agrees(into.fences, b.fences):
        return False
    append_parts(into, b)
    return True


def merge(batches: list[Batch]) -> Batch:
    """One batch with the parts of `batches`, in order."""
    out = Batch()
    for b in batches:
        append_parts(out, b)
    return out


def append_parts(into: Batch, b: Batch) -> None:
    # Empty parts skipped: a step's batch has only a step, an event and a fence.
    if b.expect:
        # An expectation on what an earlier batch writes is implied by that batch's (see take_group).
        into.expect.update({k: v for k, v in b.expect.items() if k not in into.state})
    if b.executions:
        into.executions.extend(b.executions)
    if b.updates:
        into.updates.extend(b.updates)
    if b.steps:
        into.steps.extend(b.steps)
    if b.events:
        into.events.extend(b.events)
    if b.fences:
        into.fences.update(b.fences)
    if b.messages:
        into.messages.extend(b.messages)
    if b.state:
        into.state.update(b.state)
