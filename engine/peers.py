"""Whether this process is alone on its storage, and the keeper of the concurrency
keys it keeps in memory meanwhile (`slot_keeping.Keeper`).

Other processes are looked for through their heartbeats: at most once a second as
admissions go (in the background: an admission never waits for it), and every
second while a key is kept. One seen makes the ledger give its kept keys back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .ids import now_ms

if TYPE_CHECKING:
    from .flow import FlowControl

log = logging.getLogger("dq")

#: How long closing waits for the kept keys to be given back (a storage that does not answer).
_GIVE_BACK_S = 10.0


class Peers:
    def __init__(self, flow: FlowControl) -> None:
        self.flow = flow
        self.runtime = flow.runtime
        #: No other live process shares the storage (looked at most once a second):
        #: only then does a hand-over claim the waiter for this process itself; with
        #: peers, the waiter is made due and whichever process is woken first runs it.
        self.alone = True
        #: `alone` has been looked at once (a key is only kept after that).
        self._known = False
        self._checked = 0
        self._task: asyncio.Task[None] | None = None
        #: Looks for other processes every second while the ledger keeps a key.
        self._watch: asyncio.Task[None] | None = None

    def look(self) -> None:
        """Refresh `alone` in the background, at most once a second (a hand-over decided
        on a second-old answer is still correct)."""
        now = now_ms()
        if now - self._checked < 1000:
            return
        self._checked = now
        self._task = asyncio.create_task(self.count(), name="dq-admission-peers")

    async def count(self) -> None:
        rt = self.runtime
        self._checked = now_ms()  # the runtime's look at its start counts: no second one at the first admission
        try:
            workers = await rt.storage.list_workers()
        except Exception:  # looked at again a second later
            return
        self.alone = not (self._fresh(workers) - {rt.worker_id})
        self._known = True
        if not self.alone:  # another process: no more decisions on kept keys, give them back
            self.flow.ledger.begin_let_go()

    def _fresh(self, workers: list[dict[str, Any]]) -> set[str]:
        """The ids of `workers` whose heartbeat is younger than a lease (storage clock)."""
        rt = self.runtime
        since = now_ms() + rt.clock_offset_ms - rt.lease_ms
        return {w["id"] for w in workers if int(w.get("last_heartbeat") or 0) > since}

    # -- slot_keeping.Keeper ---------------------------------------------------------------------
    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id

    def is_alone(self) -> bool:
        return self._known and self.alone and not self.runtime.closing

    async def live(self, worker_ids: list[str]) -> set[str]:
        return self._fresh(await self.runtime.storage.list_workers()) & set(worker_ids)

    def is_local(self, holder: str) -> bool:
        eid, _, step = holder.partition("|")
        if step:
            return eid in self.runtime.contexts
        return self.flow.holds_or_parks(eid)

    def took(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_peers(), name="dq-admission-keeper")

    async def _watch_peers(self) -> None:
        """While a key is kept: another live process makes this one give the keys back."""
        ledger = self.flow.ledger
        while ledger.keeps:
            await asyncio.sleep(1.0)
            await self.count()
            if not self.alone:
                await ledger.let_go()

    async def close(self) -> None:
        """Give the kept keys back before the storage closes (the handlers have ended)."""
        if self._watch is not None:
            self._watch.cancel()
        try:
            await asyncio.wait_for(self.flow.ledger.let_go(), _GIVE_BACK_S)
        except TimeoutError:  # its marker goes once this worker's heartbeat is removed or stale
            log.warning("dq: the kept concurrency keys were not given back within %s s", _GIVE_BACK_S)
