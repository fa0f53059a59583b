"""Headless Chromium for the dashboard's tests: Debian's `chromium` package driven by Playwright.

A missing browser or driver fails the test with how to install it (never a
silent skip): `apt-get install chromium` (`.ci/run` does it when missing) and
`pip install -e '.[test]'` (Playwright). `CONNECT_CHROMIUM` names another
Chromium binary. With `CONNECT_SCREENSHOTS=1` the tests save PNGs of the views
to `docs/screenshots/` (the README shows them); otherwise they write nothing there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT

SCREENSHOTS = ROOT / "docs" / "screenshots"


def chromium_path() -> str:
    named = os.environ.get("CONNECT_CHROMIUM")
    for candidate in (named, "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(
        "Chromium is not installed, and the dashboard's browser tests need it: "
        "`apt-get install chromium` (Debian's package; .ci/run installs it when missing), "
        "or set CONNECT_CHROMIUM to a Chromium binary",
        pytrace=False,
    )


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's `Browser`)."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: `pip install -e '.[test]'`", pytrace=False)
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> None:
    """Save `docs/screenshots/<name>.png` when CONNECT_SCREENSHOTS=1."""
    if os.environ.get("CONNECT_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
