"""`dq-ui serve`: load the queue (or the demo), check the options, run the dashboard under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn

from dq import Queue, storage_from_url
from dq.engine.distributed.http import mount
from dq.engine.distributed.service import is_loopback
from dq.web import ALLOWED_HOSTS_ENV, Gate, HostPolicy, Settings, parse_allowed, split_host

from .gc_tuning import gc_mode, tune_gc

DEFAULT_STORAGE = "sqlite:///dq.db"
NODE_PREFIX = "/orchestration"


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


def load_target(target: str) -> Queue:
    """`module:attr` or `path/to/file.py:attr` -> the Queue it names."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr or not attr.isidentifier():
        raise UsageError(f"TARGET {target!r} is not module:queue or path/to/file.py:queue")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = Path(where).resolve()
            if not path.is_file():
                raise UsageError(f"TARGET {target!r}: no file {where}")
            sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"TARGET {target!r}: cannot load {where}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except UsageError:
        raise
    except Exception as exc:  # the user's module failed to import
        raise UsageError(f"TARGET {target!r}: importing {where} failed: {type(exc).__name__}: {exc}") from None
    queue = getattr(module, attr, None)
    if queue is None:
        raise UsageError(f"TARGET {target!r}: {where} has no attribute {attr!r}")
    if not isinstance(queue, Queue):
        raise UsageError(f"TARGET {target!r} is a {type(queue).__name__}, not a dq queue (create_queue)")
    return queue


def _rebind(queue: Queue, storage: Any) -> Queue:
    """The same jobs, pipes and options on another storage (`--storage` with a TARGET)."""
    return queue.with_storage(storage)


def build(args: argparse.Namespace) -> tuple[Queue, list[Callable[[], Awaitable[None]]], str]:
    """The queue to serve, its background tasks and a label; raises UsageError."""
    url = args.storage
    try:
        storage = storage_from_url(url) if url else None
    except ValueError as exc:
        raise UsageError(f"--storage: {exc}") from None
    if args.target:
        queue = load_target(args.target)
        if storage is not None:
            queue = _rebind(queue, storage)
        return queue, [], args.target
    from . import demo

    storage = storage or storage_from_url(DEFAULT_STORAGE)
    queue = demo.create_demo_queue(storage)
    return queue, [lambda: demo.trickle(queue)], "demo"


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """`--allowed-host` values plus DQ_UI_ALLOWED_HOSTS; raises UsageError on a bad one."""
    names = parse_allowed([*args.allowed_host, os.environ.get(ALLOWED_HOSTS_ENV, "")])
    for name in names:
        if name != "*" and split_host(name.removeprefix(".")) is None:
            raise UsageError(f"--allowed-host {name!r} is not a host name (e.g. dq.example.com or .example.com)")
    return names


def main(args: argparse.Namespace) -> int:
    from . import create_app

    token = args.token or os.environ.get("DQ_UI_TOKEN") or None
    try:
        if not is_loopback(args.host) and not token:
            raise UsageError(
                f"refusing to serve on {args.host} without an access token: "
                "pass --token or set DQ_UI_TOKEN (or bind 127.0.0.1)"
            )
        if not 0 < args.port < 65536:
            raise UsageError(f"--port {args.port} is not a TCP port")
        try:
            collector = gc_mode()
        except ValueError as exc:
            raise UsageError(f"DQ_GC: {exc}") from None
        hosts = allowed_hosts(args)
        queue, background, label = build(args)
    except UsageError as exc:
        print(f"dq-ui serve: {exc}", file=sys.stderr)
        return 2
    settings = Settings(token=token, read_only=bool(args.read_only), bound_host=args.host, allowed_hosts=hosts)
    app = create_app(queue, settings=settings, background=background, label=f"{queue.storage.kind}")
    # The orchestration node's worker API, beside the dashboard (docs/cli.md, docs/distribution.md).
    node_app = queue.orchestration.app(token=token, local_work=not getattr(args, "no_local_work", False))
    # Tokenless (loopback only): a DNS-rebinding or cross-site page must not reach the
    # worker API either. With a token, the token is what guards it.
    node_api: Any = node_app  # an ASGI app of its own (engine/distributed/http.py)
    if not token:
        node_api = Gate(node_api, HostPolicy(bound=args.host, allowed=hosts), machine_api=True)
    app = mount(app, NODE_PREFIX, node_api)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=2, lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    tune_gc(collector)  # after start-up, so that what it freezes is the loaded app
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/"

    async def serve() -> int:
        try:
            await queue.start()
        except Exception as exc:
            print(f"dq-ui serve: cannot open storage {queue.storage.kind}: {type(exc).__name__}: {exc}", file=sys.stderr)
            with contextlib.suppress(Exception):
                await queue.close()
            return 2
        node = node_app.node
        node.url = url.rstrip("/") + NODE_PREFIX
        await node.start()
        print(f"dq-ui: serving {label} on {queue.storage.kind} storage", flush=True)
        print(f"dq-ui: open {url}" + (f"?token={token}" if token else ""), flush=True)
        print(f"dq-ui: workers connect to {node.url}" + ("" if node.local_work else " (no local work)"), flush=True)
        if settings.read_only:
            print("dq-ui: read-only: lifecycle controls are disabled", flush=True)
        closer = asyncio.create_task(_close_node_on_exit(server, node.close), name="dq-node-closer")
        try:
            await server.serve()
        finally:
            closer.cancel()
            await node.close()
        return 0 if server.started else 1

    try:
        code = asyncio.run(serve())
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        code = 0
    print("dq-ui: stopped", flush=True)
    return code


async def _close_node_on_exit(server: uvicorn.Server, close: Callable[[], Awaitable[None]]) -> None:
    """End the node's long polls as soon as shutdown begins: uvicorn waits for open
    requests before it stops. (`should_exit` is a plain flag uvicorn's signal handler sets.)"""
    while not server.should_exit:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await close()
