"""The rooms of docs/architecture.md: imports flow one way, vendor libraries stay in their module.

    gpuledger → accounting → storage
    gpuledger → streams → storage
    gpuledger → collectors → streams (schema, bus, errors only)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
ROOMS = ("gpuledger", "accounting", "streams", "collectors", "storage")
ALLOWED = {
    "storage": {"storage"},
    "streams": {"streams", "storage"},
    "accounting": {"accounting", "storage"},
    "collectors": {"collectors", "streams", "storage"},
    "gpuledger": set(ROOMS),
}
COLLECTORS_MAY_USE = {"streams.schema", "streams.bus", "streams.errors"}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def modules(room: str) -> list[Path]:
    return sorted((REPO / room).rglob("*.py"))


@pytest.mark.parametrize("room", ROOMS)
def test_imports_flow_one_way(room: str) -> None:
    wrong = []
    for path in modules(room):
        for name in imports(path):
            top = name.split(".")[0]
            if top in ROOMS and top not in ALLOWED[room]:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
            if room == "collectors" and top == "streams" and name not in COLLECTORS_MAY_USE:
                wrong.append(f"{path.relative_to(REPO)} imports {name} (collectors use streams' schema, bus and errors only)")
    assert wrong == []


@pytest.mark.parametrize(
    ("vendor", "allowed"),
    [
        ("pynvml", ("collectors/nvml", "collectors/fakenvml")),
        ("kafka", ("streams/kafka/",)),
        ("apscheduler", ("accounting/scheduler.py",)),
    ],
)
def test_vendor_libraries_stay_in_their_module(vendor: str, allowed: tuple[str, ...]) -> None:
    wrong = []
    for room in ROOMS:
        for path in modules(room):
            rel = path.relative_to(REPO).as_posix()
            if any(rel.startswith(prefix) for prefix in allowed):
                continue
            if any(name.split(".")[0] == vendor for name in imports(path)):
                wrong.append(rel)
    assert wrong == []


def test_every_room_has_a_readme() -> None:
    missing = [room for room in ROOMS if not (REPO / room / "README.md").exists()]
    assert missing == []


def test_the_cli_starts_without_the_data_stack() -> None:
    """``gpuledger collect`` runs on every GPU node: the CLI must not load Polars or pyarrow
    (about 60 MiB) until a command that needs them runs."""
    import subprocess
    import sys

    probe = "import sys, gpuledger.cli; print(sorted(m for m in ('polars', 'pyarrow', 'duckdb', 'matplotlib') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"
