"""The `dq-ui` command line: serve, worker, bench."""

from __future__ import annotations

import argparse
import sys

from dq import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dq-ui", description="dq: durable jobs and their dashboard")
    parser.add_argument("--version", action="version", version=f"dq-ui {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the dashboard with the engine in-process")
    serve.add_argument("target", nargs="?", help="module:queue or path/to/file.py:queue (default: demo)")
    serve.add_argument("--storage", default=None, help="storage URL (default: sqlite:///dq.db)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", default=None, help="access token (or DQ_UI_TOKEN)")
    serve.add_argument("--read-only", action="store_true", help="hide and refuse lifecycle controls")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; .example.com for a domain and its "
        "subdomains, * for any; or DQ_UI_ALLOWED_HOSTS, comma-separated)",
    )

    serve.add_argument("--no-local-work", action="store_true",
                       help="run no execution on this node: remote workers only")

    worker = sub.add_parser("worker", help="run a remote worker for an orchestration node")
    worker.add_argument("target", help="module:queue or path/to/file.py:queue (the job code)")
    worker.add_argument("--orchestrator", required=True, help="the node's worker API, e.g. http://node:8000/orchestration")
    worker.add_argument("--token", default=None, help="the node's token (or DQ_UI_TOKEN)")
    worker.add_argument("--concurrency", type=int, default=None, help="executions at a time (default 100)")
    worker.add_argument("--host", default=None, help="listen here for the node's calls: interrupts (cancel, pause) and wake-ups (with --port)")
    worker.add_argument("--port", type=int, default=None, help="port of that endpoint (default: none; interrupts then wait for the next lease renewal)")

    bench = sub.add_parser("bench", help="measure jobs/s and steps/s")
    bench.add_argument("--storage", default="memory://")
    bench.add_argument("--jobs", type=int, default=2000)
    bench.add_argument("--steps", type=int, default=1)
    bench.add_argument("--concurrency", type=int, default=None, help="queue concurrency: jobs in flight (default: all)")
    bench.add_argument("--job-concurrency", type=int, default=None, metavar="N", help="the job's concurrency=N")
    bench.add_argument(
        "--step-concurrency", type=int, default=None, metavar="N", help="each step's run(..., concurrency=N)"
    )
    bench.add_argument(
        "--keys", type=int, default=None, metavar="K",
        help="per-key limits: job i in key i %% K, limit --job-concurrency (default 1) per key",
    )  # fmt: skip
    bench.add_argument(
        "--start", choices=("bulk", "gather", "sequential"), default="bulk",
        help="start_many (bulk), all start() calls at once (gather), or one after another",
    )  # fmt: skip
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="print one JSON line")
    bench.add_argument("--workers", type=int, default=0,
                       help="also run the jobs through an orchestration node with N local worker processes")
    bench.add_argument("--worker-concurrency", type=int, default=200, help="executions per worker (with --workers)")
    bench.add_argument(
        "--gc",
        choices=("tuned", "default"),
        default=None,
        help="garbage collector settings: dq-ui's (tuned, the default) or CPython's (or DQ_GC)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    if args.command == "serve":
        from .serve import main as serve_main

        return serve_main(args)
    from .worker import main as worker_main

    return worker_main(args)


if __name__ == "__main__":
    sys.exit(main())
