"""`dq-ui bench` runs end to end and reports figures (speed itself is never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("storage", ["memory://", "sqlite:///"])
def test_bench_json_line(storage: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--storage", storage, "--jobs", "50", "--steps", "3",
         "--runs", "1", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["jobs"] == 50 and result["steps"] == 3
    assert result["jobs_per_s"] > 0 and result["steps_per_s"] == pytest.approx(result["jobs_per_s"] * 3, rel=0.01)


def test_bench_rejects_an_unknown_storage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--storage", "mongo://x"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "mongo" in out.stdout + out.stderr
