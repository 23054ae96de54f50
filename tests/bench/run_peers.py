"""dq against its peers, in one run on this machine.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python tests/bench/run_peers.py            # table, ~3-5 minutes
    .venv/bin/python tests/bench/run_peers.py --json     # one JSON object per row

What it measures (medians of --runs timed runs each, every run a fresh process
on a fresh store; the runs of all cases are interleaved round by round so that
load from other processes on the machine falls on every system alike):

- dq (`app.bench`, the code of `dq-ui bench`) on memory, SQLite, PostgreSQL and
  Redis: jobs/s of 1-step jobs, durable steps/s of 10-step jobs.
- pgqueuer: no-op jobs/s, enqueue + drain, on PostgreSQL, with 10 and 50 queue
  managers (the `--dequeue` of pgqueuer's own drain benchmark).
- DBOS: durable steps/s of 10-step workflows on PostgreSQL and SQLite.

For matching metrics the peer's row carries dq/peer: dq's median divided by
the peer's (above 1: dq is faster). dq's rows carry the target of issue 4.

Every PostgreSQL run gets its own database (CREATE DATABASE dq_peers_..., dropped
after the run); every Redis run its own key prefix (keys deleted after the run);
every SQLite run its own temporary file. Children that overrun --timeout are
killed (by their PID, through subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Issue 4 ("Speed") and the memory/SQLite figures it builds on: (storage, metric) -> floor.
TARGETS: dict[tuple[str, str], float] = {
    ("memory", "jobs/s"): 10_000,
    ("memory", "steps/s"): 30_000,
    ("sqlite", "jobs/s"): 2_000,
    ("sqlite", "steps/s"): 5_000,
    ("postgresql", "jobs/s"): 5_000,
    ("postgresql", "steps/s"): 10_000,
    ("redis", "jobs/s"): 5_000,
    ("redis", "steps/s"): 10_000,
}

STORAGES = ("memory", "sqlite", "postgresql", "redis")


@dataclass
class Case:
    system: str  # dq, pgqueuer, dbos
    storage: str  # memory, sqlite, postgresql, redis
    metric: str  # jobs/s or steps/s
    workload: str  # human description
    units: int  # jobs or steps done per run (the numerator of the metric)
    argv: Callable[[dict[str, str]], list[str]]  # child command, given the store
    store: str  # which fresh store the run needs: memory, sqlite, postgresql, redis
    compare_to: tuple[str, str, str] | None = None  # (system, storage, metric) of dq's row
    samples: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.system, self.storage, self.metric)

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


# --------------------------------------------------------------------------- stores


class Stores:
    """Creates a fresh store per run and removes it afterwards; remembers what is left."""

    def __init__(self, pg_dsn: str, redis_url: str) -> None:
        self.pg_dsn = pg_dsn
        self.redis_url = redis_url
        self.databases: set[str] = set()
        self.prefixes: set[str] = set()
        self.dirs: set[str] = set()
        self._n = 0

    def _name(self) -> str:
        self._n += 1
        return f"dq_peers_{os.getpid()}_{self._n}"

    def pg_url(self, database: str) -> str:
        parts = urlsplit(self.pg_dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

    async def _pg_admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.pg_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self, kind: str) -> dict[str, str]:
        if kind == "memory":
            return {"url": "memory://"}
        if kind == "sqlite":
            d = tempfile.mkdtemp(prefix="dq-peers-")
            self.dirs.add(d)
            path = os.path.join(d, "bench.db")
            return {"url": f"sqlite:///{path}", "path": path, "dir": d}
        if kind == "postgresql":
            name = self._name()
            asyncio.run(self._pg_admin(f'CREATE DATABASE "{name}"'))
            self.databases.add(name)
            return {"url": self.pg_url(name), "database": name}
        if kind == "redis":
            prefix = f"dqpeers{secrets.token_hex(5)}"
            self.prefixes.add(prefix)
            return {"url": self.redis_url, "prefix": prefix}
        raise ValueError(kind)

    def remove(self, store: dict[str, str]) -> None:
        if "dir" in store:
            shutil.rmtree(store["dir"], ignore_errors=True)
            self.dirs.discard(store["dir"])
        if "database" in store:
            asyncio.run(
                self._pg_admin(f'DROP DATABASE IF EXISTS "{store["database"]}" WITH (FORCE)')
            )
            self.databases.discard(store["database"])
        if "prefix" in store:
            self._delete_prefix(store["prefix"])
            self.prefixes.discard(store["prefix"])

    def _delete_prefix(self, prefix: str) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        finally:
            client.close()

    def cleanup(self) -> None:
        for store in (
            [{"dir": d} for d in list(self.dirs)]
            + [{"database": n} for n in list(self.databases)]
            + [{"prefix": p} for p in list(self.prefixes)]
        ):
            try:
                self.remove(store)
            except Exception as exc:  # report, keep cleaning
                print(f"cleanup of {store} failed: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- cases


def build_cases(a: argparse.Namespace) -> list[Case]:
    py = sys.executable
    cases: list[Case] = []
    storages = [s for s in a.storages.split(",") if s]
    systems = set(a.systems.split(","))
    dq_conc = ["--concurrency", str(a.dq_concurrency)] if a.dq_concurrency else []

    def dq_argv(jobs: int, steps: int, gc: str, *mode: str) -> Callable[[dict[str, str]], list[str]]:
        def argv(store: dict[str, str]) -> list[str]:
            extra = ["--redis-prefix", store["prefix"]] if "prefix" in store else []
            return [
                py, os.path.join(HERE, "peers_dq.py"), "--storage", store["url"], *extra,
                "--jobs", str(jobs), "--steps", str(steps), "--gc", gc, *dq_conc, *mode,
            ]  # fmt: skip

        return argv

    gcs = {"tuned": ["tuned"], "default": ["default"], "both": ["tuned", "default"]}[a.dq_gc]
    for gc in gcs if "dq" in systems else []:
        # "dq": as dq-ui runs it (app/gc_tuning.py); "dq-defgc": CPython's collector settings.
        system = "dq" if gc == "tuned" else "dq-defgc"
        for s in storages:
            cases.append(
                Case(system, s, "jobs/s", f"{a.jobs} jobs x 1 step", a.jobs, dq_argv(a.jobs, 1, gc), s)
            )
            if not a.step_jobs:  # --step-jobs 0: the 1-step rows only
                continue
            cases.append(
                Case(
                    system, s, "steps/s", f"{a.step_jobs} jobs x {a.steps} steps",
                    a.step_jobs * a.steps, dq_argv(a.step_jobs, a.steps, gc), s,
                )
            )  # fmt: skip
        # The producer side, as applications start work (one start() per request):
        # one call after the other, and many at once (gather), on PostgreSQL.
        if "postgresql" in storages and a.start_jobs and gc == "tuned":
            n = a.start_jobs
            cases.append(Case(
                system, "postgresql", "starts/s", f"{n} start() one at a time", n,
                dq_argv(n, 1, gc, "--start", "sequential", "--clock", "starts"), "postgresql",
            ))  # fmt: skip
            cases.append(Case(
                system, "postgresql", "gather/s", f"{a.jobs} start() at once, to the end", a.jobs,
                dq_argv(a.jobs, 1, gc, "--start", "gather"), "postgresql",
            ))  # fmt: skip

    if "pgqueuer" in systems and "postgresql" in storages:
        batches = [int(x) for x in str(a.pgq_batch).split(",") if x]
        for c in (int(x) for x in a.pgq_concurrency.split(",") if x):
            for b in batches:

                def pgq_argv(store: dict[str, str], c: int = c, b: int = b) -> list[str]:
                    return [
                        py, os.path.join(HERE, "peers_pgqueuer.py"), "--dsn", store["url"],
                        "--jobs", str(a.pgq_jobs), "--concurrency", str(c), "--batch", str(b),
                    ]  # fmt: skip

                cases.append(
                    Case(
                        "pgqueuer", "postgresql", "jobs/s",
                        f"{a.pgq_jobs} no-op jobs, c={c} (batch {b})",
                        a.pgq_jobs, pgq_argv, "postgresql", ("dq", "postgresql", "jobs/s"),
                    )
                )  # fmt: skip
    if "pgqueuer" in systems and "memory" in storages:
        for b in [int(x) for x in str(a.pgq_batch).split(",") if x]:

            def pgq_memory(store: dict[str, str], b: int = b) -> list[str]:
                return [
                    py, os.path.join(HERE, "peers_pgqueuer.py"), "--in-memory",
                    "--jobs", str(a.pgq_jobs), "--concurrency", "1", "--batch", str(b),
                ]  # fmt: skip

            cases.append(Case(
                "pgqueuer", "memory", "jobs/s", f"{a.pgq_jobs} no-op jobs, in-memory (batch {b})", a.pgq_jobs,
                pgq_memory, "memory", ("dq", "memory", "jobs/s"),
            ))  # fmt: skip

    if "pgqueuer" in systems and "postgresql" in storages:
        batches = [int(x) for x in str(a.pgq_batch).split(",") if x]
        if a.start_jobs:

            def pgq_single(store: dict[str, str]) -> list[str]:
                return [
                    py, os.path.join(HERE, "peers_pgqueuer.py"), "--dsn", store["url"], "--single",
                    "--jobs", str(a.start_jobs), "--concurrency", "10", "--batch", str(batches[0]),
                ]  # fmt: skip

            cases.append(Case(
                "pgqueuer", "postgresql", "starts/s", f"{a.start_jobs} single enqueues, c=10", a.start_jobs,
                pgq_single, "postgresql", ("dq", "postgresql", "starts/s"),
            ))  # fmt: skip

    if "dbos" in systems:
        for s in ("postgresql", "sqlite"):
            if s not in storages:
                continue

            def dbos_argv(store: dict[str, str]) -> list[str]:
                return [
                    py, os.path.join(HERE, "peers_dbos.py"), "--system-db-url", store["url"],
                    "--workflows", str(a.dbos_workflows), "--steps", str(a.steps), "--mode", a.dbos_mode,
                ]  # fmt: skip

            cases.append(
                Case(
                    "dbos", s, "steps/s", f"{a.dbos_workflows} {a.dbos_mode} workflows x {a.steps} steps",
                    a.dbos_workflows * a.steps, dbos_argv, s, ("dq", s, "steps/s"),
                )
            )  # fmt: skip
    return cases


def run_case(case: Case, stores: Stores, timeout: float) -> None:
    store = stores.create(case.store)
    try:
        argv = case.argv(store)
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise RuntimeError(f"{case.system}/{case.storage} {case.metric} failed:\n{tail}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rate = case.units / out["elapsed_s"]
        case.samples.append(rate)
        case.extra.append(out)
        print(
            f"  {case.system:<9} {case.storage:<10} {case.metric:<8} {rate:>10,.0f}"
            f"   ({out['elapsed_s']:.2f} s timed, {wall:.1f} s with start-up)",
            file=sys.stderr,
        )
    finally:
        stores.remove(store)


# --------------------------------------------------------------------------- report


def rows(cases: list[Case]) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in cases}
    out = []
    for c in cases:
        med = c.median()
        row: dict[str, Any] = {
            "storage": c.storage,
            "system": c.system,
            "metric": c.metric,
            "workload": c.workload,
            "median": round(med, 1) if med is not None else None,
            "samples": [round(x, 1) for x in c.samples],
            "dq_over_peer": None,
            "target": None,
            "meets_target": None,
        }
        if c.system in ("dq", "dq-defgc"):
            target = TARGETS.get((c.storage, c.metric))
            row["target"] = target
            row["meets_target"] = None if med is None or target is None else med >= target
        # The child's CPU over its clock per unit of the metric: steadier than the rate
        # on a loaded machine (the children that report it: dq's and pgqueuer's).
        cpus = [e["cpu_s"] / c.units * 1e6 for e in c.extra if "cpu_s" in e]
        row["cpu_us"] = round(statistics.median(cpus), 1) if cpus else None
        if c.system == "pgqueuer" and c.extra:
            row["drain_only_jobs_per_s"] = round(
                statistics.median(e["jobs"] / e["drain_s"] for e in c.extra), 1
            )
        # dq's row for the same storage and metric, run with either collector setting.
        for system, ratio in (("dq", "dq_over_peer"), ("dq-defgc", "dq_defgc_over_peer")):
            dq_case = by_key.get((system, *c.compare_to[1:])) if c.compare_to else None
            dq_med = dq_case.median() if dq_case is not None else None
            if dq_med is not None and med:
                row[ratio] = round(dq_med / med, 2)
        dq_row = by_key.get(("dq", *c.compare_to[1:])) if c.compare_to else None
        if dq_row is not None and row["cpu_us"]:
            dq_cpus = [e["cpu_s"] / dq_row.units * 1e6 for e in dq_row.extra if "cpu_s" in e]
            if dq_cpus:  # above 1: dq spends less CPU per unit than the peer
                row["peer_cpu_over_dq"] = round(row["cpu_us"] / statistics.median(dq_cpus), 2)
        out.append(row)
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    head = (
        f"{'storage':<11}{'system':<10}{'metric':<9}{'workload':<34}{'median':>10}  {'CPU us':>7}  "
        f"{'dq/peer (defgc)':>16}  {'target':>13}  samples"
    )
    print(head)
    print("-" * len(head))
    for r in table:
        med = "failed" if r["median"] is None else f"{r['median']:,.0f}"
        ratio = "" if r["dq_over_peer"] is None else f"{r['dq_over_peer']:.2f}x"
        if r.get("dq_defgc_over_peer") is not None:
            ratio += f" ({r['dq_defgc_over_peer']:.2f}x)"
        target = ""
        if r["target"] is not None:
            target = f"{r['target']:,.0f}" + (" ok" if r["meets_target"] else " MISS")
        samples = ", ".join(f"{x:,.0f}" for x in r["samples"])
        cpu = "" if r.get("cpu_us") is None else f"{r['cpu_us']:.1f}"
        print(
            f"{r['storage']:<11}{r['system']:<10}{r['metric']:<9}{r['workload']:<34}{med:>10}  {cpu:>7}  "
            f"{ratio:>16}  {target:>13}  {samples}"
        )
    # Concurrent single start() calls against start_many (issue 17: within 50%).
    by = {(r["system"], r["storage"], r["metric"]): r["median"] for r in table}
    gather, bulk = by.get(("dq", "postgresql", "gather/s")), by.get(("dq", "postgresql", "jobs/s"))
    if gather and bulk:
        print(f"dq PostgreSQL: start() calls at once / start_many = {gather / bulk:.2f}x")
    peers = [r for r in table if r["system"] == "pgqueuer" and r["metric"] == "jobs/s" and r["median"]]
    for storage in ("postgresql", "memory"):
        best = max((r for r in peers if r["storage"] == storage), key=lambda r: r["median"], default=None)
        dq = by.get(("dq", storage, "jobs/s"))
        if best is not None and dq:
            print(f"dq {storage} jobs/s / pgqueuer's best ({best['workload']}) = {dq / best['median']:.2f}x")
            if best.get("peer_cpu_over_dq"):
                print(f"  CPU per job, pgqueuer's ({best['cpu_us']:.1f} us) / dq's = {best['peer_cpu_over_dq']:.2f}x")


def versions(a: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in ("dq", "pgqueuer", "dbos", "asyncpg", "redis", "sqlalchemy"):
        try:
            info[f"{pkg}_py" if pkg == "redis" else pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    try:
        info["dq_git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def server_versions(a: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        import asyncpg

        async def pg() -> str:
            conn = await asyncpg.connect(a.pg_dsn)
            try:
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()

        info["postgresql_server"] = asyncio.run(pg())
    except Exception as exc:
        info["postgresql_server"] = f"unreachable: {exc}"
    try:
        import redis

        client = redis.Redis.from_url(a.redis_url)
        info["redis_server"] = client.info("server")["redis_version"]
        client.close()
    except Exception as exc:
        info["redis_server"] = f"unreachable: {exc}"
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs per case (median reported)")
    p.add_argument("--jobs", type=int, default=5000, help="dq 1-step jobs per run")
    p.add_argument("--step-jobs", type=int, default=1000, help="dq multi-step jobs per run (0: no steps/s rows)")
    p.add_argument("--steps", type=int, default=10, help="steps per dq job / DBOS workflow")
    p.add_argument(
        "--dq-concurrency",
        type=int,
        default=0,
        help="dq executions in flight (0: unlimited, the default of dq-ui bench)",
    )
    p.add_argument("--pgq-jobs", type=int, default=5000, help="pgqueuer jobs per run")
    p.add_argument(
        "--pgq-concurrency", default="10,50", help="pgqueuer queue managers, comma-separated"
    )
    p.add_argument("--pgq-batch", default="10,50", help="pgqueuer dequeue batch sizes, comma-separated (one row each)")
    p.add_argument("--start-jobs", type=int, default=300,
                   help="jobs of the producer rows (start() one at a time; 0: no such rows)")
    p.add_argument("--dbos-workflows", type=int, default=100, help="DBOS workflows per run")
    p.add_argument(
        "--dbos-mode",
        choices=("sync", "async"),
        default="sync",
        help="DBOS workflows as plain functions on its thread pool (its faster path) or async",
    )
    p.add_argument("--storages", default=",".join(STORAGES))
    p.add_argument("--systems", default="dq,pgqueuer,dbos")
    p.add_argument(
        "--dq-gc",
        choices=("tuned", "default", "both"),
        default="both",
        help="dq's garbage collector: as dq-ui sets it (row dq), CPython's (row dq-defgc), or both",
    )
    p.add_argument("--pg-dsn", default=os.environ.get("DQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="an admin DSN; bench databases are created next to its database")  # fmt: skip
    p.add_argument(
        "--redis-url", default=os.environ.get("DQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    p.add_argument(
        "--timeout", type=float, default=300, help="seconds before a child run is killed"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per row instead of the table"
    )
    p.add_argument(
        "--save", metavar="PATH", help="also write the JSON lines (run info first) to PATH"
    )
    a = p.parse_args(argv)

    cases = build_cases(a)
    if not cases:
        p.error("nothing to measure with these --systems/--storages")
    stores = Stores(a.pg_dsn, a.redis_url)
    info = {**versions(a), **server_versions(a)}
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    failures: list[str] = []
    try:
        for r in range(a.runs):
            print(f"round {r + 1}/{a.runs}", file=sys.stderr)
            k = r % len(cases)  # rotate the order so no system always runs first
            for case in cases[k:] + cases[:k]:
                try:
                    run_case(case, stores, a.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failures.append(str(exc))
                    print(f"  {exc}", file=sys.stderr)
    finally:
        stores.cleanup()
    info["loadavg_before"] = [round(x, 2) for x in load0]
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = round(time.perf_counter() - t_start, 1)
    info["runs"] = a.runs

    table = rows(cases)
    lines = [json.dumps({"run": info}), *(json.dumps(row) for row in table)]
    if a.save:
        with open(a.save, "w") as f:
            f.write("\n".join(lines) + "\n")
    if a.json:
        print("\n".join(lines))
    else:
        print(
            f"\n{info['date']}  {info['cpus']} CPUs  python {info['python']}  dq {info.get('dq_git')}  "
            f"pgqueuer {info['pgqueuer']}  dbos {info['dbos']}  "
            f"PostgreSQL {info['postgresql_server']}  Redis {info['redis_server']}"
        )
        print(
            f"median of {a.runs} runs per row; load average {info['loadavg_before']} -> "
            f"{info['loadavg_after']}; {info['wall_s']} s in all\n"
        )
        print_table(table)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
