"""Instructions per job of dq checkouts on the memory adapter (or `--url`), counted by valgrind.

    .venv/bin/python tests/bench/instructions.py /tmp/base . [--steps 10]
    .venv/bin/python tests/bench/instructions.py /tmp/base . --batch 100 --start gather --step-concurrency 10

Each checkout (with its own `.venv`, or the branch's linked in) runs `dq-ui bench`'s
workload (`timed_run`: N jobs of K no-op steps on `memory://`) under
`valgrind --tool=cachegrind --cache-sim=no`, once with 1,000 jobs and once with
6,000; the difference over 5,000 is the instructions one job costs, start-up and
imports cancelled out. With a limit (`--job-concurrency`, `--step-concurrency`,
`--keys`, `--concurrency` as in `limits_table.py`), `--batch B` runs the jobs as
runs of B jobs each (a fresh queue and store per run, as the table's cells), so that
a limit's line of waiters is as long as there, not thousands long. The count does not move with the machine's load (and
barely between runs: PYTHONHASHSEED is fixed), so a change of 1% shows. Slow:
about 30 s per checkout for 1-step jobs under valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess

CHILD = r"""
import asyncio, sys
from dq import storage_from_url
from dq.app.bench import Workload, timed_run
from dq.app.gc_tuning import tune_gc

n, k, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) or int(sys.argv[1])
limits = [int(a) if a != "-" else None for a in sys.argv[4:8]]
start, url = sys.argv[8], sys.argv[9]


async def main():
    await timed_run(storage_from_url(url), Workload(min(200, batch), k, *limits, start))  # imports, caches
    for _ in range(n // batch):
        await timed_run(storage_from_url(url), Workload(batch, k, *limits, start))


tune_gc("tuned")
asyncio.run(main())
"""


def instructions(checkout: str, jobs: int, steps: int, extra: list[str] | None = None) -> int:
    python = os.path.join(checkout, ".venv", "bin", "python")
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         python, "-c", CHILD, str(jobs), str(steps), *(extra or ["0", "-", "-", "-", "-", "bulk", "memory://"])],
        cwd=checkout, env={**os.environ, "PYTHONPATH": os.path.abspath(checkout), "PYTHONHASHSEED": "0"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0, help="jobs per run (default: all in one run)")
    parser.add_argument("--url", default="memory://", help="storage; on PostgreSQL the count is the dq process's only")
    parser.add_argument("--start", choices=("bulk", "gather", "sequential"), default="bulk")
    for flag in ("--concurrency", "--job-concurrency", "--step-concurrency", "--keys"):
        parser.add_argument(flag, type=int, default=None)
    args = parser.parse_args()
    limits = [args.concurrency, args.job_concurrency, args.step_concurrency, args.keys]
    extra = [str(args.batch), *("-" if v is None else str(v) for v in limits), args.start, args.url]
    ref = None
    for checkout in args.checkouts:
        per_job = (instructions(checkout, 6000, args.steps, extra) - instructions(checkout, 1000, args.steps, extra)) / 5000
        ref = ref or per_job
        print(f"{checkout}: {per_job:,.0f} instructions per {args.steps}-step job ({per_job / ref:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
