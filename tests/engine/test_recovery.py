"""kill -9 in the middle of a workflow: the restart resumes from the last completed step."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CRASHY = str(Path(__file__).with_name("crashy.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def _spawn(url: str, workdir: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, CRASHY, url, str(workdir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _wait_for(path: Path, lines: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().split()) >= lines:
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"{path.name} never reached {lines} lines")


def crash_and_recover(url: str, workdir: Path, executions: int) -> collections.Counter[tuple[str, int]]:
    (workdir / "block").touch()
    first = _spawn(url, workdir, "start", str(executions))
    try:
        _wait_for(workdir / "in-step-3", executions, first)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    (workdir / "block").unlink()
    second = _spawn(url, workdir, "resume")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.strip() == f"completed {executions}", (out, err)
    effects = collections.Counter()
    for line in (workdir / "effects").read_text().splitlines():
        eid, step = line.split()
        effects[(eid, int(step))] += 1
    return effects


def assert_exactly_once_per_completed_step(effects: collections.Counter[tuple[str, int]], executions: int) -> None:
    for i in range(executions):
        eid = f"e{i}"
        assert [effects[(eid, n)] for n in (1, 2, 4, 5)] == [1, 1, 1, 1], (eid, effects)
        # The step that was interrupted runs again: at least once, at most twice.
        assert effects[(eid, 3)] == 2, (eid, effects)


@pytest.mark.slow
def test_sqlite_kill_9_resumes_every_execution_from_its_last_step(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    effects = crash_and_recover(url, tmp_path, executions=5)
    assert_exactly_once_per_completed_step(effects, 5)


@pytest.mark.slow
def test_sqlite_repeated_crashes(tmp_path: Path) -> None:
    for run_no in range(3):
        workdir = tmp_path / f"run{run_no}"
        workdir.mkdir()
        effects = crash_and_recover(f"sqlite:///{workdir / 'crash.db'}", workdir, executions=3)
        assert_exactly_once_per_completed_step(effects, 3)
