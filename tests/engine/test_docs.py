"""The runnable examples of docs/ run and print what their comments promise.

An example is a ```python block that calls `asyncio.run(`. Each `print(...)` line
in it ends with a comment holding the exact line it prints (or `e.g. ...` for
a line that varies from run to run); the example's output must be those lines,
in order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("cron.md", "flow-control.md", "pipes-and-triggers.md", "changing-code.md")
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_PRINT = re.compile(r"^\s*print\(.*\)\s+# (.*)$")


def _examples() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        path = ROOT / "docs" / page
        if not path.exists():
            continue
        blocks = [b for b in _BLOCK.findall(path.read_text()) if "asyncio.run(" in b]
        out += [(f"{page}#{i + 1}", block) for i, block in enumerate(blocks)]
    return out


@pytest.mark.parametrize(("name", "code"), _examples(), ids=[n for n, _ in _examples()])
def test_doc_example_prints_what_it_promises(name: str, code: str, tmp_path: Path) -> None:
    expected = [m.group(1) for line in code.splitlines() if (m := _PRINT.match(line))]
    assert expected, f"{name}: an example shows what it prints (print(...)  # output)"
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    assert len(printed) == len(expected), out.stdout
    for line, want in zip(printed, expected, strict=True):
        assert want.startswith("e.g. ") or line == want, out.stdout
