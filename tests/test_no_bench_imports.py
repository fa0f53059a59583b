"""Tests build the platform through `connect.roles`, never through `bench/`:
benchmarks may change what they measure at any time, and a test must not
change with them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def bench_imports(source: str) -> list[int]:
    """The lines of `source` that import `bench` or anything under it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names = [node.module]
        else:
            continue
        if any(name == "bench" or name.startswith("bench.") for name in names):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        ("from bench import gateway\n", [1]),
        ("import os\nimport bench.durable\n", [2]),
        ("def f():\n    from bench.gateway import start\n", [2]),
        ("import benchmarks, os.path\nfrom connect import bench\nfrom . import bench\n", []),
    ],
)
def test_the_check_finds_bench_imports_at_any_depth(source: str, lines: list[int]) -> None:
    assert bench_imports(source) == lines


def test_no_test_module_imports_bench() -> None:
    modules = sorted(TESTS.rglob("*.py"))
    assert len(modules) > 50  # the walk found the suite
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line}"
        for path in modules
        for line in bench_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "tests import bench/ (build the platform with connect.roles instead): " + ", ".join(
        offenders
    )
