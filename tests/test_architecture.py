"""Unit tests: the shape of the package (imports in one direction, one seam per library)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pubtasks"

#: The pure core: no Celery app, no settings loader, no I/O of its own.
CORE = {
    "schedule", "cron", "confirms", "message", "framing", "errors", "defaults", "orphans",
    "keys", "lua", "records", "ids", "timing", "tries", "urls", "resuming", "times",
    "properties", "counters", "bounds", "specs", "acl",
}  # fmt: skip

#: Library internals that only the AMQP seam may touch (pubtasks/rabbitmq.py).
INTERNALS = [
    r"\._basic_publish\b",
    r"\._confirm_selected\b",
    r"\bcreate_publish_batch\b",
    r"\._connection\b",
    r"\bbytes_sent\b",
    r"\btransport\.write\(",
    r"\._serialize_properties\b",
    r"\._when\b",
    r"\._next_instance\b",
]


#: Celery worker, billiard and kombu Redis transport internals that only the worker seam
#: may touch (pubtasks/transport.py).
WORKER_INTERNALS = [
    r"\bshould_stop\b",
    r"\bshould_terminate\b",
    r"\breserved_requests\b",
    r"\bscheduled_requests\b",
    r"\.unacked_key\b",
    r"\.restore_by_tag\b",
    r"\b_q_for_pri\b",
    r"\bworker\.beat\b",
    r"getattr\(\w+, \"beat\"",
    r"\b_connparams\b",
    r"\b_disconnect_pools\b",
    r"\b_close_clients\b",
]


#: redis-py connection internals that only the Redis seam may touch (pubtasks/sentinel.py).
REDIS_INTERNALS = [
    r"\bsentinel_manager\b",
    r"\bservice_name\b",
    r"\bSentinelManagedConnection\b",
    r"\bconnect_check_health\b",
    r"\bget_master_address\b",
    r"\._sock\b",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """Every pubtasks module ``name`` imports, from any import statement, nested ones too."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycle() -> None:
    cycles = sorted(name for name in MODULES if name in reachable(name))
    assert cycles == [], f"modules in an import cycle: {cycles}"


@pytest.mark.parametrize("core", sorted(CORE))
def test_the_core_imports_only_the_core(core: str) -> None:
    assert reachable(f"pubtasks.{core}") <= {f"pubtasks.{c}" for c in CORE} | {"pubtasks"}


def test_importing_the_package_builds_no_celery_app() -> None:
    assert GRAPH["pubtasks"] == set()


def code_of(path: Path) -> str:
    """The module's code without its docstrings and comments (they may name internals)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            body[0] = ast.Pass()
    return ast.unparse(tree)


@pytest.mark.parametrize("internal", INTERNALS)
def test_library_internals_stay_in_the_amqp_seam(internal: str) -> None:
    users = sorted(name for name, path in MODULES.items() if re.search(internal, code_of(path)))
    assert set(users) <= {"pubtasks.rabbitmq"}, users


@pytest.mark.parametrize("internal", WORKER_INTERNALS)
def test_worker_internals_stay_in_the_worker_seam(internal: str) -> None:
    users = sorted(name for name, path in MODULES.items() if re.search(internal, code_of(path)))
    assert set(users) <= {"pubtasks.transport"}, users


@pytest.mark.parametrize("internal", REDIS_INTERNALS)
def test_redis_internals_stay_in_the_redis_seam(internal: str) -> None:
    users = sorted(name for name, path in MODULES.items() if re.search(internal, code_of(path)))
    assert set(users) <= {"pubtasks.sentinel"}, users


def test_the_commands_other_than_bench_load_nothing_of_the_bench() -> None:
    show = (
        "import sys; from pubtasks import cli; cli.parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('pubtasks.bench')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", show], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"
