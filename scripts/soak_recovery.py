#!/usr/bin/env python3
"""Nightly-style crash soak: kill -9 a worker again and again, then check what survived.

    .venv/bin/python scripts/soak_recovery.py --storage sqlite --storage postgres \\
        --storage redis --runs 200 --per-run 4 [--random]

Each run starts one worker process (tests/faults/worker.py) that first resumes
what the previous, killed, worker left, then starts `--per-run` executions of a
5-step job and is killed with SIGKILL:
- default: while all of its executions are inside step 3 (blocked there);
- `--random`: at a random moment (steps take a few ms each), so the kill lands
  anywhere: inside a step, between a step and its commit, during a finish...
A last worker drains everything. Checked, per execution: it completed; every
step ran at least once; no process ran a step twice; a step already completed in
storage when a worker was killed never ran again afterwards (so at most one
re-execution per interruption); by default also the exact counts (steps 1, 2, 4,
5 once, step 3 twice). Prints one summary line per storage; exits 1 on a violation.

PostgreSQL gets a database of its own (dropped after), Redis a random key prefix
(deleted after), SQLite a temporary file. DQ_TEST_POSTGRES_DSN and
DQ_TEST_REDIS_URL point at other servers than the local ones.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dq.engine.storage.base import ExecutionQuery, Storage  # noqa: E402
from dq.engine.storage.redis import RedisStorage  # noqa: E402
from dq.engine.storage.sql import SqlStorage  # noqa: E402

WORKER = ROOT / "tests" / "faults" / "worker.py"
PG_ADMIN = os.environ.get("DQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Soak:
    def __init__(self, kind: str, workdir: Path, runs: int, per_run: int, random_kill: bool) -> None:
        self.kind, self.workdir, self.runs, self.per_run = kind, workdir, runs, per_run
        self.random_kill = random_kill
        self.spec = ""
        self.storage: Storage | None = None
        self.pg_name = ""
        self.prefix = ""
        self.procs: list[subprocess.Popen[bytes]] = []
        #: (pid of the killed worker, the steps completed in storage after it died).
        self.snapshots: list[tuple[int, dict[str, set[str]]]] = []

    # -- the store ------------------------------------------------------------------------
    async def setup(self) -> None:
        import asyncpg
        from sqlalchemy import make_url

        if self.kind == "sqlite":
            path = self.workdir / "dq.db"
            self.spec, self.storage = f"sqlite:///{path}", SqlStorage.sqlite(str(path))
        elif self.kind == "postgres":
            self.pg_name = f"dq_soak_{secrets.token_hex(4)}"
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'CREATE DATABASE "{self.pg_name}"')
            finally:
                await conn.close()
            dsn = make_url(PG_ADMIN).set(database=self.pg_name).render_as_string(hide_password=False)
            self.spec, self.storage = dsn, SqlStorage.postgres(dsn)
        elif self.kind == "redis":
            self.prefix = f"dqsoak{secrets.token_hex(6)}"
            self.spec = f"{REDIS_URL}#{self.prefix}"
            self.storage = RedisStorage(REDIS_URL, prefix=self.prefix)
        else:
            raise SystemExit(f"unknown storage {self.kind!r}: sqlite, postgres or redis")
        await self.storage.open()

    async def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if self.storage is not None:
            await self.storage.aclose()
        if self.pg_name:
            import asyncpg

            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            finally:
                await conn.close()
        if self.prefix:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                keys = [k async for k in client.scan_iter(match=f"{self.prefix}:*", count=1000)]
                for start in range(0, len(keys), 500):
                    await client.delete(*keys[start : start + 500])
            finally:
                await client.aclose()

    # -- workers --------------------------------------------------------------------------
    def spawn(self, *args: object) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DQ_LEASE": "2s"}
        with open(self.workdir / f"w{n}.out", "wb") as out, open(self.workdir / f"w{n}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), self.spec, str(self.workdir), *map(str, args)],
                stdout=out, stderr=err, env=env, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.workdir / f"w{self.procs.index(proc)}.out").read_text()

    async def wait(self, what: str, predicate: object, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()  # type: ignore[operator]
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                err = (self.workdir / f"w{self.procs.index(proc)}.err").read_text()[-2000:]
                raise RuntimeError(f"{self.kind}: {what} (worker rc={proc.poll()}): {err}")
            await asyncio.sleep(0.02)

    async def completed(self) -> int:
        assert self.storage is not None
        return (await self.storage.count(ExecutionQuery(statuses=["completed"]))).get("completed", 0)

    async def steps_done(self) -> dict[str, set[str]]:
        """Input id -> the steps completed in storage now."""
        assert self.storage is not None
        out: dict[str, set[str]] = {}
        for rec in await self.storage.query(ExecutionQuery()):
            steps = await self.storage.get_steps(rec.id)
            out[rec.input["id"]] = {s.key.removeprefix("step-") for s in steps if s.status == "completed"}
        return out

    def blocked_in(self, run_no: int, pid: int) -> set[str]:
        path = self.workdir / "blocked"
        if not path.exists():
            return set()
        rows = (line.split() for line in path.read_text().splitlines())
        return {r[0] for r in rows if r[2] == str(pid) and r[0].startswith(f"b{run_no}e")}

    # -- the soak -------------------------------------------------------------------------
    async def run(self) -> dict[str, int]:
        rng = random.Random()
        for run_no in range(self.runs):
            if not self.random_kill:
                (self.workdir / f"block-{run_no}").touch()
            extra = ["sleep_s=0.01"] if self.random_kill else []
            proc = self.spawn("kill9", run_no, self.per_run, *extra)
            await self.wait("start", lambda proc=proc: "started" in self.output(proc), proc)
            if self.random_kill:
                await asyncio.sleep(rng.uniform(0, 0.25))
            else:
                ids = {f"b{run_no}e{i}" for i in range(self.per_run)}
                done_before = run_no * self.per_run

                async def ready(
                    proc: subprocess.Popen[bytes] = proc, run_no: int = run_no,
                    ids: set[str] = ids, done_before: int = done_before,
                ) -> bool:  # fmt: skip
                    return self.blocked_in(run_no, proc.pid) == ids and await self.completed() == done_before

                await self.wait("executions in step 3", ready, proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            self.snapshots.append((proc.pid, await self.steps_done()))
            (self.workdir / f"block-{run_no}").unlink(missing_ok=True)
        last = self.spawn("drain")
        await self.wait("drain", lambda: last.poll() is not None, last, timeout=300)
        return self.check(last.pid)

    def check(self, last_pid: int) -> dict[str, int]:
        total = self.runs * self.per_run
        out = self.output(self.procs[-1]).split()
        problems: list[str] = []
        if out != ["completed", str(total)]:
            problems.append(f"drain printed {out}, expected completed {total}")
        pids = [p.pid for p in self.procs]
        effects: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
        for line in (self.workdir / "effects").read_text().splitlines():
            eid, step, pid, _at = line.split()
            effects[(eid, step)].append(int(pid))
        reruns = 0
        for run_no in range(self.runs):
            for i in range(self.per_run):
                eid = f"b{run_no}e{i}"
                for step in "12345":
                    ran = effects[(eid, step)]
                    reruns += max(0, len(ran) - 1)
                    if not ran:
                        problems.append(f"{eid} step {step} never ran")
                    if len(set(ran)) != len(ran):
                        problems.append(f"{eid} step {step} ran twice in one process: {ran}")
                    for killed, done in self.snapshots:
                        if step in done.get(eid, set()):
                            later = [p for p in ran if pids.index(p) > pids.index(killed)]
                            if later:
                                problems.append(f"{eid} step {step} was completed when {killed} died, ran again in {later}")
                    if not self.random_kill:
                        expected = 2 if step == "3" else 1
                        if len(ran) != expected:
                            problems.append(f"{eid} step {step} ran {len(ran)} times, expected {expected}")
        if problems:
            raise AssertionError(f"{self.kind}: {len(problems)} violation(s):\n  " + "\n  ".join(problems[:50]))
        return {"runs": self.runs, "executions": total, "step_reruns": reruns}


async def soak(kind: str, args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix=f"dq-soak-{kind}-") as tmp:
        s = Soak(kind, Path(tmp), args.runs, args.per_run, args.random)
        started = time.monotonic()
        try:
            await s.setup()
            result = await s.run()
        except (AssertionError, RuntimeError) as exc:
            print(f"FAIL {exc}", flush=True)
            return False
        finally:
            await s.teardown()
        mode = "random kill" if args.random else "kill in step 3"
        print(
            f"ok   {kind:<8} {mode}: {result['runs']} kills, {result['executions']} executions "
            f"all completed, 0 lost, 0 completed steps re-run, {result['step_reruns']} "
            f"interrupted-step re-runs ({time.monotonic() - started:.1f}s)",
            flush=True,
        )
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", action="append", choices=["sqlite", "postgres", "redis"])
    parser.add_argument("--runs", type=int, default=100, help="kills per storage (default 100)")
    parser.add_argument("--per-run", type=int, default=4, help="executions started per worker")
    parser.add_argument("--random", action="store_true", help="kill at random moments")
    args = parser.parse_args()
    ok = True
    for kind in args.storage or ["sqlite", "postgres", "redis"]:
        ok = asyncio.run(soak(kind, args)) and ok
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
