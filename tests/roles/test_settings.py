"""Every setting is read by some role: a field nothing reads would be an
option accepted and then ignored."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import connect.roles
from connect.roles import PlatformSettings

ROLES = Path(connect.roles.__file__).parent


def attributes_read(source: str) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}


def test_every_setting_is_read_by_a_role() -> None:
    read: set[str] = set()
    for path in ROLES.glob("*.py"):
        if path.name != "settings.py":
            read |= attributes_read(path.read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(PlatformSettings)}
    assert fields - read == set()


def test_the_check_sees_an_unread_field() -> None:
    assert "unread" not in attributes_read("def f(s):\n    return s.host + s.port\n")
    assert {"host", "port"} <= attributes_read("def f(s):\n    return s.host + s.port\n")
