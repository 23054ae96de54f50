"""The runnable examples in examples/ run and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("fan_out_fan_in.py", ["Aggregated results: x_processed1, x_processed2"]),
        ("conditional_branching.py", ["Low value detected: 3", "High value detected: 42"]),
        ("compensation.py", ["Risky job succeeded for t1", "order bad-7 refunded: Simulated failure",
                             "bad-7, refund-bad-7"]),
    ],
)  # fmt: skip
def test_example_runs(script: str, expected: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for line in expected:
        assert line in out.stdout, out.stdout
