"""Flow control's cost in two checkouts, interleaved in the same run (issue 15).

    .venv/bin/python tests/bench/limits_ab.py --rounds 5 /tmp/base /work/wt/limits2 [--adapters sqlite,redis]

Each round runs every cell (a row of limits_table.py on one adapter) once per
checkout, alternating, each in its own process importing that checkout's `dq`
(PYTHONPATH) on a fresh store. Besides jobs/s it reports the cell process's CPU
time per job (`time.process_time` around the run: the event loop and SQLite's thread), which
moves far less with the machine's load than wall time. Prints medians and
each limited row as a share of the same checkout's unlimited row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from limits_table import ROWS, _run_cell  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkouts", nargs="+")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--seq-jobs", type=int, default=500)
    p.add_argument("--adapters", default="sqlite,postgresql,redis")
    p.add_argument("--rows", default="", help="comma-separated row numbers (0-based); default all")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for label, flags in rows:
            filled = [f.format(n=args.jobs, s=args.seq_jobs) for f in flags]
            for adapter in args.adapters.split(","):
                for co in args.checkouts:
                    os.environ["PYTHONPATH"] = co
                    out = _run_cell(adapter, filled, args.timeout)
                    if isinstance(out, dict):
                        cells.setdefault((label, adapter, co), []).append(out)
                    else:
                        print(f"{label} {adapter} {co}: {out}", file=sys.stderr)
    print("| row | adapter | " + " | ".join(f"{c} jobs/s · CPU ms/job" for c in args.checkouts) + " |")
    print("|---|---|" + "---:|" * len(args.checkouts))
    for label, _ in rows:
        for adapter in args.adapters.split(","):
            out = []
            for co in args.checkouts:
                runs = cells.get((label, adapter, co), [])
                if not runs:
                    out.append("—")
                    continue
                jps = statistics.median(r["jobs_per_s"] for r in runs)
                cpu = statistics.median(r["cpu_ms_per_job"] for r in runs)
                out.append(f"{jps:,.0f} · {cpu:.2f}")
            print(f"| {label} | {adapter} | " + " | ".join(out) + " |")
    print(json.dumps({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in cells.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
