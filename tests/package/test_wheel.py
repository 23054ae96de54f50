"""The wheel as a user gets it: built from this tree, installed (not editable) into a
throw-away virtualenv outside the repository, and served from folders that know nothing of
the repository — the demo on a temporary SQLite file, and a user project that has its own
`app` package (the layout that collided with dq's own `app` before dq had one import name).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"

pytestmark = pytest.mark.slow

USER_APP = '''
from dq import create_job, create_queue, run, create_sqlite_storage

@create_job(name="user_owned_job")
async def user_owned_job(data: dict) -> str:
    return await run("echo", lambda: "hello from the user's app package")

queue = create_queue(jobs=[user_owned_job], storage=create_sqlite_storage(path="user.db"))
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PIP_CONSTRAINT": str(CONSTRAINTS)}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("dq-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    env = {**os.environ, "PIP_CONSTRAINT": str(CONSTRAINTS)}
    subprocess.run(
        [str(where / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True, env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    return where


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """No path into the repository: what runs must come from the installed wheel."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture
def serve(venv: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(cwd: Path, *args: str) -> str:
        port = _free_port()
        log = cwd / f"serve-{port}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(venv / "bin" / "dq-ui"), "serve", *args, "--port", str(port)],
                cwd=cwd, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"dq-ui serve exited {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("dq-ui serve did not answer /healthz within 60 s")

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_wheel_installs_only_the_dq_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"dq", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    for needed in ("dq/templates/_ui.html", "dq/static/htmx.min.js", "dq/static/htmx-ext-sse.min.js",
                   "dq/static/dq.css", "dq/static/dq.js", "dq/app/demo.py"):  # fmt: skip
        assert needed in names, needed


def test_version_and_no_twin_modules(venv: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(venv / "bin" / "dq-ui"), "--version"], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert re.fullmatch(r"dq-ui \d+\.\d+\.\d+\S*\n", out.stdout), out.stdout
    code = (
        "import sys, dq, dq.app.cli, dq.web, dq.app.demo;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('app','web','engine','templates','static')));"
        "print(dq.__file__)"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    twins, where = out.stdout.splitlines()
    assert twins == "[]"
    assert where.startswith(str(venv)), where


def test_wheel_serves_the_demo_from_an_empty_folder(serve: object, tmp_path: Path) -> None:
    base = serve(tmp_path, "--storage", f"sqlite:///{tmp_path / 'demo.db'}")  # type: ignore[operator]
    assert httpx.get(f"{base}/", timeout=10).status_code == 200
    assert httpx.get(f"{base}/static/htmx.min.js", timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    ids: list[str] = []
    while not ids and time.monotonic() < deadline:
        page = httpx.get(f"{base}/executions", timeout=10)
        assert page.status_code == 200
        ids = re.findall(r'href="/executions/([A-Za-z0-9_-]+)"', page.text)
        time.sleep(0.3)
    assert ids, "the demo started no execution"
    detail = httpx.get(f"{base}/executions/{ids[0]}", timeout=10)
    assert detail.status_code == 200 and ids[0] in detail.text


def test_wheel_serves_a_user_project_with_its_own_app_package(serve: object, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "main.py").write_text(USER_APP)
    base = serve(tmp_path, "app.main:queue")  # type: ignore[operator]
    jobs = httpx.get(f"{base}/jobs", timeout=10)
    assert jobs.status_code == 200 and "user_owned_job" in jobs.text


def test_unimportable_target_is_one_line_and_exit_2(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    res = subprocess.run([str(venv / "bin" / "dq-ui"), "serve", "app.nowhere:queue"], cwd=tmp_path,
                         env=_clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "\n" not in err and "app.nowhere" in err and "ModuleNotFoundError" in err, err
