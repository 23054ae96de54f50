"""dq is importable under one name only: every module of the package loads as `dq.*`,
and none of them drags in a top-level `app`, `web` or `engine` twin."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import dq


def test_every_module_imports_under_dq_only() -> None:
    names = [m.name for m in pkgutil.walk_packages(dq.__path__, prefix="dq.")]
    assert {"dq.engine.runtime", "dq.web.hub", "dq.app.cli", "dq.app.demo"} <= set(names)
    for name in names:
        importlib.import_module(name)
    twins = sorted(m for m in sys.modules if m.split(".")[0] in ("app", "web", "engine", "templates", "static"))
    assert twins == []


def test_public_api_is_reexported() -> None:
    from dq import engine

    assert set(dq.__all__) == set(engine.__all__)
    for name in dq.__all__:
        assert getattr(dq, name) is getattr(engine, name)
