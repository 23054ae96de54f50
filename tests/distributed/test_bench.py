"""`dq-ui bench --workers N`: the same jobs in-process and through a node with N worker
processes, both figures from one run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.timeout(180)
def test_bench_through_a_node_with_two_workers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dq.app.cli", "bench", "--storage", "sqlite:///", "--jobs", "200", "--steps", "3",
         "--runs", "1", "--workers", "2", "--json"],
        capture_output=True, text=True, cwd=str(ROOT), timeout=170,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["node"]["workers"] == 2 and result["node"]["steps_per_s"] > 0
    assert result["node_vs_in_process"] == pytest.approx(result["node"]["steps_per_s"] / result["steps_per_s"], abs=0.001)


def test_bench_refuses_a_negative_worker_count() -> None:
    out = subprocess.run([sys.executable, "-m", "dq.app.cli", "bench", "--workers", "-1"],
                         capture_output=True, text=True, cwd=str(ROOT), timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--workers must be >= 0" in out.stdout
