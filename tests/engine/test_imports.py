"""Engine modules import each other at the top of the module, never inside a function:
a cycle between two modules is broken by moving the shared piece, not by hiding an
import where the linter and the reader do not look. The exceptions are deliberate."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"

#: (module, function, imported module): storage adapters, imported only when chosen,
#: so that dq runs without the drivers of the others (SQLAlchemy, asyncpg, redis).
DELIBERATE = {
    ("storage/factory.py", "create_memory_storage", "storage.memory"),
    ("storage/factory.py", "create_sqlite_storage", "storage.sql"),
    ("storage/factory.py", "create_postgres_storage", "storage.sql"),
    ("storage/factory.py", "create_redis_storage", "storage.redis"),
    ("storage/sql.py", "sqlite", "storage.sql_sqlite"),
    ("storage/sql.py", "postgres", "storage.sql_postgres"),
}


def _engine_module(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The engine modules an import statement names, relative to engine/."""
    package = path.parent.relative_to(ENGINE).parts
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n.removeprefix("dq.engine.") for n in names if n.startswith("dq.engine")]
    if node.level == 0:
        mod = node.module or ""
        return [mod.removeprefix("dq.engine.")] if mod.startswith("dq.engine") else []
    base = list(package[: len(package) - (node.level - 1)])
    if node.module:
        return [".".join([*base, node.module])]
    return [".".join([*base, a.name]) for a in node.names]


def in_function_imports() -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    for mod in _engine_module(path, node):
                        found.add((str(path.relative_to(ENGINE)), fn.name, mod))
    return found


def test_no_import_inside_a_function_between_engine_modules() -> None:
    unexpected = in_function_imports() - DELIBERATE
    assert not unexpected, f"imports inside functions between engine modules: {sorted(unexpected)}"


def test_the_deliberate_ones_still_exist() -> None:
    # A stale entry would let a new import of that name in: the list stays exact.
    assert DELIBERATE <= in_function_imports()


def test_the_walk_resolves_relative_imports() -> None:
    source = "def f():\n    from .waits import matches\n    from . import steps\n"
    tree = ast.parse(source)
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    names = [m for node in fn.body if isinstance(node, ast.ImportFrom) for m in _engine_module(ENGINE / "pipe.py", node)]
    assert names == ["waits", "steps"]
