"""`queue.orchestration` and `queue.worker`: the node and the worker as queue services.

The `orchestration={...}` options are checked when the queue is defined
(a bad value fails `create_queue`, naming the key); they say where the node
listens and how workers reach it. Both services serve HTTP with uvicorn in the
current event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import uvicorn

from ..durations import parse_interval
from ..errors import DqError
from . import wire
from .http import NodeApp, authorized, mount, not_found
from .node import Node
from .worker import Worker

if TYPE_CHECKING:
    from ..queue import Queue

log = logging.getLogger("dq.worker")

_KEYS = {"host", "port", "endpoint", "interval", "token", "url"}
DEFAULT_ENDPOINT = "/orchestration"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OrchestrationOptions:
    def __init__(self, options: Mapping[str, Any] | None) -> None:
        opts = dict(options or {})
        unknown = set(opts) - _KEYS
        if unknown:
            raise ValueError(f"orchestration: unknown option(s) {sorted(unknown)}; expected some of {sorted(_KEYS)}")
        self.host = str(opts.get("host", "127.0.0.1"))
        port = opts.get("port", 4000)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"orchestration: port must be a TCP port number, got {port!r}")
        self.port = port
        endpoint = opts.get("endpoint", DEFAULT_ENDPOINT)
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise ValueError(f"orchestration: endpoint must be a path starting with '/', got {endpoint!r}")
        self.endpoint = "/" + endpoint.strip("/")
        self.interval_ms = parse_interval(opts.get("interval", "1/s"), "orchestration: interval")
        token = opts.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("orchestration: token must be a non-empty string")
        self.token: str | None = token
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        #: The server's own address (the node's worker API and the dashboard share it).
        self.base_url = f"http://{host}:{self.port}"
        self.url = str(opts.get("url") or f"{self.base_url}{self.endpoint}")


def check_token(host: str, token: str | None) -> None:
    if not token and not is_loopback(host):
        raise DqError(f"refusing to run an orchestration node on {host} without a token: "
                      "workers could take and forge any execution (set orchestration token=, "
                      "or --token / DQ_UI_TOKEN)")  # fmt: skip


class _Server:
    """A uvicorn server for `app` running as a task of the current loop."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2)  # fmt: skip
        self.server = uvicorn.Server(config)
        # The host program owns the signals (e.g. `dq-ui worker`'s SIGTERM handling):
        # uvicorn would replace its handlers while it serves.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(), name="dq-http")
        while not self.server.started:
            if self.task.done():
                await self.task
                raise DqError(f"could not listen on {self.server.config.host}:{self.server.config.port}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class Site:
    """The one HTTP server of a queue's services: the node's worker API and the
    dashboard (`queue.monitoring`), each answering the paths under its prefix
    ('' for everything else). It listens while at least one is mounted."""

    def __init__(self, options: OrchestrationOptions) -> None:
        self.options = options
        self.routes: dict[str, Any] = {}
        self._server: _Server | None = None

    async def add(self, prefix: str, app: Any) -> None:
        if prefix in self.routes:
            raise DqError(f"something is already served under {prefix or '/'!r} on this queue's server")
        self.routes[prefix] = app
        if self._server is None:
            check_token(self.options.host, self.options.token)
            server = _Server(self, self.options.host, self.options.port)
            try:
                await server.start()
            except BaseException:
                del self.routes[prefix]
                raise
            self._server = server

    async def remove(self, prefix: str) -> None:
        self.routes.pop(prefix, None)
        if not self.routes and self._server is not None:
            await self._server.stop()
            self._server = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return  # lifespan: each mounted app's own is driven by its service
        path = scope.get("path", "")
        for prefix in sorted(self.routes, key=len, reverse=True):
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                await self.routes[prefix](scope, receive, send)
                return
        await not_found(scope, receive, send)


class Orchestration:
    """`queue.orchestration`: run this process as the node (`start()`), or build its
    worker API to mount elsewhere (`app()`, as `dq-ui serve` does)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.options = OrchestrationOptions(queue.orchestration_options)
        self.node: Node | None = None
        self.site = Site(self.options)

    def app(self, *, token: str | None = None, local_work: bool = True) -> NodeApp:
        token = token if token is not None else self.options.token
        self.node = Node(self.queue, interval_ms=self.options.interval_ms, local_work=local_work, token=token)
        return NodeApp(self.node, token)

    async def start(self, *, local_work: bool = True) -> None:
        opts = self.options
        check_token(opts.host, opts.token)
        node_app = self.app(local_work=local_work)
        assert self.node is not None
        self.node.url = opts.url
        await self.node.start()
        try:
            await self.site.add(opts.endpoint, mount(not_found, opts.endpoint, node_app))
        except BaseException:
            await self.node.close()
            raise

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.close()  # first: it ends the long polls the server waits for
        await self.site.remove(self.options.endpoint)


class WorkerService:
    """`queue.worker`: run this process as a worker of the node named by the
    queue's orchestration options (or `orchestrator=`)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.worker: Worker | None = None
        self._server: _Server | None = None

    async def start(
        self,
        host: str | None = None,
        port: int | None = None,
        endpoint: str = "/dq-worker",
        *,
        orchestrator: str | None = None,
        token: str | None = None,
        concurrency: int | None = None,
    ) -> Worker:
        opts = OrchestrationOptions(self.queue.orchestration_options)
        token = token if token is not None else opts.token
        url = None
        if port is not None:
            bind = host or "127.0.0.1"
            check_token(bind, token)
            advertised = bind if bind not in ("0.0.0.0", "::") else socket.gethostname()
            url = f"http://{advertised}:{port}/{endpoint.strip('/')}"
        worker = Worker(self.queue, orchestrator or opts.url, token, concurrency=concurrency, url=url)
        if port is not None:
            self._server = _Server(mount(not_found, endpoint, _WakeApp(worker, token)), host or "127.0.0.1", port)
            await self._server.start()
        try:
            await worker.start()
        except BaseException:
            await self.stop()
            raise
        self.worker = worker
        return worker

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.close()
        if self._server is not None:
            await self._server.stop()


class _WakeApp:
    """The worker's endpoint, called by the node with the shared token:
    `POST /wake` makes it look for work and for interrupts now; `POST /interrupt`
    (body `wire.Interrupt`) says executions it holds have a pause or cancel waiting."""

    def __init__(self, worker: Worker, token: str | None) -> None:
        self.worker = worker
        self.token = token.encode() if token else None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path")
        if not authorized(dict(scope.get("headers") or ()), self.token):
            status = 401
        elif path not in ("/wake", "/interrupt") or scope.get("method") != "POST":
            status = 404
        elif path == "/interrupt" and not _valid_interrupt(await _read_body(receive)):
            status = 400
        else:
            # Answer at once; the renewal that brings the request back runs on its own.
            status = 204
            act = self.worker.wake() if path == "/wake" else self.worker.queue.runtime.renew_leases()
            task = asyncio.create_task(_logged(act, path), name=f"dq-worker-{path[1:]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


_MAX_INTERRUPT_BODY = 1024 * 1024


async def _logged(act: Coroutine[Any, Any, None], path: str) -> None:
    """The node's call is answered already: a failure is logged (the next renewal retries)."""
    try:
        await act
    except Exception as exc:
        log.warning("dq: acting on the node's %s call failed: %s", path, exc)


async def _read_body(receive: Any) -> bytes | None:
    """The request body, or None when it is over _MAX_INTERRUPT_BODY or the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_INTERRUPT_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _valid_interrupt(body: bytes | None) -> bool:
    if body is None:
        return False
    try:
        msgspec.json.decode(body, type=wire.Interrupt)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return True
