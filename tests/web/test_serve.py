"""`dq-ui serve`: bad command lines exit 2 with one line; a real server starts, prints its URL
and stops cleanly on Ctrl-C with SSE clients connected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dq.app.cli import main

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DQ_UI = str(Path(sys.executable).with_name("dq-ui"))


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err  # one line
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("nocolon", "not module:queue"),
        ("tests/web/target_app.py:", "not module:queue"),
        ("tests/web/missing.py:queue", "no file"),
        ("no_such_module_xyz:queue", "importing no_such_module_xyz failed"),
        ("tests/web/target_app.py:nothing", "has no attribute 'nothing'"),
        ("tests/web/target_app.py:not_a_queue", "not a dq queue"),
        ("tests.web.target_app:not_a_queue", "not a dq queue"),
    ],
)
def test_malformed_target_is_one_line_and_exit_2(target: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert words in _fails(["serve", target], capsys)


def test_broken_target_module_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken_app.py"
    bad.write_text("raise RuntimeError('config missing')\n")
    assert "RuntimeError: config missing" in _fails(["serve", f"{bad}:queue"], capsys)


@pytest.mark.parametrize("url", ["nonsense", "ftp://host/db", "sqlite://", "mysql://x"])
def test_malformed_storage_url_is_one_line_and_exit_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--storage" in _fails(["serve", "--storage", url], capsys)


def test_non_loopback_bind_needs_a_token(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DQ_UI_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        assert "without an access token" in _fails(["serve", "--host", host], capsys)


def test_unknown_garbage_collector_mode_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQ_GC", "fast")
    err = _fails(["serve"], capsys)
    assert "DQ_GC" in err and "'fast'" in err


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "DQ_DEMO_SPEED": "4", **(env or {})}
    return subprocess.Popen([DQ_UI, "serve", *args], cwd=ROOT, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _wait_ready(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up")


def test_target_file_is_served(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(["tests/web/target_app.py:queue", "--port", str(port)])
    try:
        _wait_ready(f"http://127.0.0.1:{port}")
        page = httpx.get(f"http://127.0.0.1:{port}/jobs/custom").text
        assert "only-step" in page
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert f"http://127.0.0.1:{port}/" in out


def test_ctrl_c_stops_cleanly_with_sse_clients_connected(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(["--storage", f"sqlite:///{tmp_path}/serve.db", "--port", str(port), "--host", "0.0.0.0",
                   "--token", "tok"])  # fmt: skip
    clients: list[httpx.Client] = []
    try:
        _wait_ready(base)
        streams = []
        for page in ("overview", "executions", "overview"):
            c = httpx.Client(timeout=10, headers={"authorization": "Bearer tok"})
            clients.append(c)
            cm = c.stream("GET", f"{base}/live?page={page}")
            res = cm.__enter__()
            assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
            streams.append(cm)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in clients:
            c.close()
    assert proc.returncode == 0, err
    assert took < 6, f"stopping took {took:.1f}s"
    assert f"{base.replace('127.0.0.1', '0.0.0.0')}/?token=tok" in out  # the login link
    assert "dq-ui: stopped" in out
    assert "Traceback" not in err


def test_a_malformed_allowed_host_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DQ_UI_ALLOWED_HOSTS", raising=False)
    assert "'bad host!' is not a host name" in _fails(["serve", "--allowed-host", "bad host!"], capsys)
    monkeypatch.setenv("DQ_UI_ALLOWED_HOSTS", "ok.test,evil.test/path")
    assert "'evil.test/path' is not a host name" in _fails(["serve"], capsys)


def test_allowed_hosts_from_the_flag_and_the_environment(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(["tests/web/target_app.py:queue", "--port", str(port), "--allowed-host", "dq.test"],
                  env={"DQ_UI_ALLOWED_HOSTS": "other.test, .corp.test"})  # fmt: skip
    try:
        _wait_ready(base)
        for host, status in (("dq.test", 200), (f"other.test:{port}", 200), ("a.corp.test", 200),
                             (f"localhost:{port}", 200), ("evil.test", 400)):  # fmt: skip
            assert httpx.get(f"{base}/jobs", headers={"host": host}).status_code == status, host
        refused = httpx.get(f"{base}/jobs", headers={"host": "evil.test"}).text
        assert "--allowed-host evil.test" in refused
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
