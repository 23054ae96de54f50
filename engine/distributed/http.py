"""The node's worker API as a plain ASGI application: `POST <endpoint>/v1/<call>`.

Plain ASGI (no framework) so the same app runs standalone under uvicorn
(`queue.orchestration.start()`) and mounted under `/orchestration` in front of
the dashboard (`dq-ui serve`). Each request is checked before anything is
applied: the shared token (constant-time compare; 401), the body size (413),
then the call's schema (400, via `Node.handle`). Storage errors that mean the
store is unreachable answer 503, which workers retry.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from . import wire
from .node import Node, NodeError

log = logging.getLogger("dq.node")

MAX_BODY = 16 * 1024 * 1024

Scope = dict[str, Any]


class NodeApp:
    def __init__(self, node: Node, token: str | None, *, max_body: int = MAX_BODY, lifespan: bool = False) -> None:
        self.node = node
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.lifespan = lifespan

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, body = await self._answer(scope, receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Any) -> tuple[int, bytes]:
        headers = dict(scope.get("headers") or ())
        if not authorized(headers, self.token):
            return _error(401, "a valid worker token is required (Authorization: Bearer <token>)")
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if not path.startswith("/v1/"):
            return _error(404, f"no such endpoint {path!r}: the worker API is POST /v1/<call>")
        if scope.get("method") != "POST":
            return _error(405, "the worker API takes POST requests")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return _error(413, f"request body of {int(length)} bytes is over the node's limit of {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _error(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return _error(413, f"request body is over the node's limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        worker = headers.get(wire.WORKER_HEADER.encode())
        gone = asyncio.Event()
        watch = asyncio.create_task(_watch_disconnect(receive, gone), name="dq-node-disconnect")
        try:
            return 200, await self.node.handle(path[4:], b"".join(chunks), worker.decode() if worker else None, gone)
        except NodeError as exc:
            return _error(exc.status, str(exc))
        except Exception as exc:
            if self.node.storage.is_unavailable(exc):
                return _error(503, f"the node's storage is unavailable: {exc}")
            log.exception("dq: node failed on %s", path)
            return _error(500, f"the node failed: {type(exc).__name__}: {exc}")
        finally:
            watch.cancel()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.lifespan:
                        await self.node.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.lifespan:
                    await self.node.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def authorized(headers: dict[bytes, bytes], token: bytes | None) -> bool:
    """No token configured, or `Authorization: Bearer <token>` (compared in constant time)."""
    if token is None:
        return True
    given = headers.get(wire.TOKEN_HEADER.encode(), b"")
    return given[:7].lower() == b"bearer " and hmac.compare_digest(given[7:].strip(), token)


async def not_found(scope: Scope, receive: Any, send: Any) -> None:
    """The app beside a mounted API when nothing else is served."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"not found\n"})


async def _watch_disconnect(receive: Any, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, wire.encode({"error": message})


def mount(app: Any, prefix: str, node_app: Any) -> Any:
    """`app` with `node_app` answering every path under `prefix` (the rest, and the
    lifespan, go to `app`)."""
    prefix = "/" + prefix.strip("/")

    async def combined(scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == prefix or path.startswith(prefix + "/")):
            await node_app({**scope, "path": path[len(prefix):] or "/", "root_path": ""}, receive, send)
            return
        await app(scope, receive, send)

    return combined
