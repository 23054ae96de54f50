"""The node's calls to workers' endpoints: interrupt a remote execution at once.

A pause or cancel is stored on the execution record (`control`) wherever it
was asked (this node's dashboard, user code, another node on the same
storage); every node sees the `requested` event in the shared event log. The
node then POSTs `<worker url>/interrupt` to the worker that holds the
execution, with the shared token, and the worker renews its leases at once,
which brings the request back and interrupts the handler (a cancel stops it
anywhere, a pause at its next step boundary).

This is a shortcut, never the only way: a worker without an endpoint, or a
call that fails, is logged and left to the worker's next lease renewal or step
report. Only the node that registered the worker pushes to it, so with several
nodes a request is pushed once. (New work needs no push: idle workers wait in
a long poll on their node, which answers as soon as work is due.)
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from . import wire

log = logging.getLogger("dq.node")

#: The worker answers at once (it acts in the background): a slow one is left to polling.
TIMEOUT_S = 5.0


class Pusher:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self._client: httpx.AsyncClient | None = None
        #: worker url -> executions still to tell it about: a burst of requests (a bulk
        #: cancel) becomes one call per worker at a time, not one per execution.
        self._pending: dict[str, set[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Successful pushes (for tests and the log).
        self.sent = 0

    def interrupt(self, worker_url: str, execution_ids: list[str]) -> None:
        """POST `<worker_url>/interrupt` in the background; failures are logged, never raised."""
        self._pending.setdefault(worker_url, set()).update(execution_ids)
        if worker_url not in self._tasks:
            self._tasks[worker_url] = asyncio.create_task(self._drain(worker_url), name="dq-node-push")

    async def _drain(self, worker_url: str) -> None:
        try:
            while ids := self._pending.pop(worker_url, None):
                await self._post(worker_url, sorted(ids))
        finally:
            del self._tasks[worker_url]

    async def _post(self, worker_url: str, execution_ids: list[str]) -> None:
        if self._client is None:
            headers = {wire.TOKEN_HEADER: f"Bearer {self.token}"} if self.token else {}
            self._client = httpx.AsyncClient(headers=headers, timeout=TIMEOUT_S)
        target = worker_url.rstrip("/") + "/interrupt"
        try:
            response = await self._client.post(target, content=wire.encode(wire.Interrupt(execution_ids)))
        except httpx.HTTPError as exc:
            log.warning("dq: could not reach worker endpoint %s (%s: %s); it sees the request at its next "
                        "lease renewal", target, type(exc).__name__, exc)  # fmt: skip
            return
        if response.status_code >= 300:
            log.warning("dq: worker endpoint %s answered %d to an interrupt; it sees the request at its next "
                        "lease renewal", target, response.status_code)  # fmt: skip
            return
        self.sent += 1

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
