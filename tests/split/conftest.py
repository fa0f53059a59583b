"""Failure reports of the split-roles tests carry every process's log."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.split.harness import Cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Cluster):
                report.sections.append((f"split-roles process logs ({report.when})", value.logs()))
    return report
