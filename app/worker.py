"""`dq-ui worker TARGET --orchestrator URL`: a remote worker for the jobs of TARGET.

It needs the job code (TARGET) and the node's URL and token, never storage
credentials. SIGTERM / Ctrl-C: it stops taking work, lets running handlers
reach a step boundary and hands back what is left, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from dq import DqError
from dq.engine.distributed.remote import NodeUnavailable

from .gc_tuning import tune_gc
from .serve import UsageError, load_target


def main(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("DQ_UI_TOKEN") or None
    try:
        if not args.orchestrator.startswith(("http://", "https://")):
            raise UsageError(f"--orchestrator {args.orchestrator!r} is not an http:// or https:// URL")
        if args.concurrency is not None and args.concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
        if args.port is not None and not 0 < args.port < 65536:
            raise UsageError(f"--port {args.port} is not a TCP port")
        queue = load_target(args.target)
    except UsageError as exc:
        print(f"dq-ui worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tune_gc()  # after the job code's imports, as `serve` (DQ_GC=default keeps CPython's)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            worker = await queue.worker.start(
                host=args.host, port=args.port, orchestrator=args.orchestrator, token=token,
                concurrency=args.concurrency,
            )  # fmt: skip
        except (DqError, NodeUnavailable) as exc:  # refused (token, code) or unreachable
            print(f"dq-ui worker: {exc}", file=sys.stderr)
            return 1 if isinstance(exc, NodeUnavailable) else 2
        for job, why in sorted(worker.refused_jobs.items()):
            print(f"dq-ui worker: job {job!r} refused by the node: {why}", file=sys.stderr, flush=True)
        print(f"dq-ui worker: {worker.id} running {worker.capacity} at a time for {args.orchestrator}", flush=True)
        await stop.wait()
        print("dq-ui worker: stopping (finishing or handing back running executions)", flush=True)
        await queue.worker.stop()
        return 0

    code = asyncio.run(run())
    print("dq-ui worker: stopped", flush=True)
    return code
