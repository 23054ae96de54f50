"""The state owner's leases: renewed for every held execution (a lost one
interrupts its attempt; a stored pause or cancel request is picked up), and
executions of dead processes or expired leases reclaimed."""

from __future__ import annotations

import asyncio
import os
import socket

from .errors import StorageLostError
from .runtime_state import RuntimeState, log
from .transitions import LOST, Control


class Leases(RuntimeState):
    async def recover(self) -> list[str]:
        """Reclaim executions held by dead processes of this host and by expired leases."""
        host = socket.gethostname()
        dead = []
        for w in await self.storage.list_workers():
            info = w.get("info") or {}
            if w["id"] != self.worker_id and info.get("host") == host and not _pid_alive(info.get("pid")):
                dead.append(w["id"])
        ids = await self.storage.reclaim(dead)
        for wid in dead:
            await self.storage.remove_worker(wid)
        if ids:
            log.info("dq: recovered %d execution(s) to resume by replay", len(ids))
            self.kick()
        return ids

    async def _lease_loop(self) -> None:
        interval = max(0.05, self.lease_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_leases()
                await self.storage.heartbeat(self.worker_id, self._worker_info("running"))
                if await self.storage.reclaim():
                    self.kick()
                await self._measure_clock()
            except StorageLostError as exc:
                self.lose_storage(exc)
                return
            except Exception as exc:
                log.warning("dq: lease renewal failed: %s", exc)

    async def renew_leases(self) -> None:
        held = {i: c for i, c in self.contexts.items() if not c.finishing and c.record.token}
        if not held:
            return
        controls = await self.storage.renew(self.worker_id, list(held), self.lease_ms)
        for eid, ctx in held.items():
            if ctx.finishing:
                continue
            if eid not in controls:
                log.warning("dq: lost the lease of execution %s; another worker resumes it", eid)
                self.interrupt(ctx, LOST)
            elif ctx.control is None and (requested := Control.parse(controls[eid])) is not None:
                self.interrupt(ctx, requested)


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
