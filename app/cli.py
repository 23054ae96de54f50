"""The `dq-ui` command line: serve, worker, bench."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dq-ui", description="dq: durable jobs and their dashboard")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the dashboard with the engine in-process")
    serve.add_argument("target", nargs="?", help="module:queue or path/to/file.py:queue (default: demo)")
    serve.add_argument("--storage", default=None, help="storage URL (default: sqlite:///dq.db)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", default=None, help="access token (or DQ_UI_TOKEN)")
    serve.add_argument("--read-only", action="store_true", help="hide and refuse lifecycle controls")

    worker = sub.add_parser("worker", help="run a remote worker")
    worker.add_argument("target")
    worker.add_argument("--orchestrator", required=True)
    worker.add_argument("--token", default=None)

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
    print("dq-ui worker: the orchestration node is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
