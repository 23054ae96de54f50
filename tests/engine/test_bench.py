"""`dq-ui bench` runs end to end and reports figures (speed itself is never asserted here)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dq.app.gc_tuning import THRESHOLDS, tune_gc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("storage", ["memory://", "sqlite:///"])
def test_bench_json_line(storage: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dq.app.cli", "bench", "--storage", storage, "--jobs", "50", "--steps", "3",
         "--runs", "1", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["jobs"] == 50 and result["steps"] == 3
    assert result["jobs_per_s"] > 0 and result["steps_per_s"] == pytest.approx(result["jobs_per_s"] * 3, rel=0.01)


def test_bench_rejects_an_unknown_storage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dq.app.cli", "bench", "--storage", "mongo://x"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "mongo" in out.stdout + out.stderr


@pytest.mark.parametrize(("flag", "env", "mode"), [([], {}, "tuned"), (["--gc", "default"], {}, "default"),
                                                  ([], {"DQ_GC": "default"}, "default")])  # fmt: skip
def test_bench_sets_the_garbage_collector(flag: list[str], env: dict[str, str], mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dq.app.cli", "bench", "--storage", "memory://", "--jobs", "20", "--runs", "1",
         "--json", *flag],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True, env={**os.environ, **env},
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["gc"] == mode
    expected = list(THRESHOLDS) if mode == "tuned" else [700, 10, 10]
    assert result["gc_thresholds"] == expected


def test_tune_gc_freezes_the_startup_heap() -> None:
    code = "import gc; from dq.app.gc_tuning import tune_gc; tune_gc('tuned'); print(gc.get_freeze_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert int(out.stdout) > 1000


def test_tuned_young_threshold_follows_what_collections_free() -> None:
    """A young collection that frees much (cyclic garbage) halves the threshold, down to
    the floor; one that walks only live objects doubles it, up to the ceiling."""
    code = """
import gc
from dq.app.gc_tuning import YOUNG_MAX, tune_gc
tune_gc('tuned')
seen = [gc.get_threshold()[0]]
class Node: pass
for _ in range(5):
    for _ in range(40_000):
        a, b = Node(), Node(); a.b, b.a = b, a
    gc.collect(0)
    seen.append(gc.get_threshold()[0])
live = []
for _ in range(5):
    live.extend([i] for i in range(40_000))
    gc.collect(0)
    seen.append(gc.get_threshold()[0])
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert json.loads(out.stdout) == [500_000, 250_000, 125_000, 62_500, 50_000, 50_000,
                                      100_000, 200_000, 400_000, 500_000, 500_000]  # fmt: skip


def test_a_threshold_the_program_sets_is_not_paced() -> None:
    code = """
import gc
from dq.app.gc_tuning import tune_gc
tune_gc('tuned')
gc.set_threshold(700, 10, 10)
live = [[i] for i in range(40_000)]
gc.collect(0)
print(list(gc.get_threshold()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert json.loads(out.stdout) == [700, 10, 10]


def test_tune_gc_names_an_unknown_mode() -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="'fast'"):
        tune_gc("fast")
    assert gc.get_threshold() == before


@pytest.mark.parametrize(
    "flags",
    [
        ["--job-concurrency", "3", "--start", "gather"],
        ["--step-concurrency", "2", "--start", "sequential"],
        ["--keys", "4"],
        ["--concurrency", "5", "--start", "sequential"],
    ],
)
def test_bench_limit_flags(flags: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dq.app.cli", "bench", "--storage", "sqlite:///", "--jobs", "30", "--runs", "1", "--json", *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    named = dict(zip(flags[::2], flags[1::2], strict=True))
    assert result["jobs"] == 30 and result["jobs_per_s"] > 0
    assert result["start"] == named.get("--start", "bulk")
    assert result["job_concurrency"] == (int(named["--job-concurrency"]) if "--job-concurrency" in named else None)
    assert result["step_concurrency"] == (int(named["--step-concurrency"]) if "--step-concurrency" in named else None)
    assert result["keys"] == (int(named["--keys"]) if "--keys" in named else None)


@pytest.mark.parametrize("flags", [["--job-concurrency", "0"], ["--keys", "-2"], ["--steps", "0", "--step-concurrency", "1"]])
def test_bench_refuses_bad_limit_flags(flags: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dq.app.cli", "bench", "--jobs", "5", *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert flags[-2] in out.stdout or flags[0] in out.stdout, out.stdout
