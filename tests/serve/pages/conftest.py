"""A real browser for the pages: Debian's Chromium driven by Playwright, and the app served by
uvicorn on 127.0.0.1 in a thread (a browser needs a real socket; TestClient has none).

Without Chromium these tests skip, unless ``PROMPTLABEL_REQUIRE_BROWSER`` is set (CI sets it, so
there a missing browser fails instead of passing quietly)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["CHROMIUM", "chromium_path"]

CHROMIUM = os.environ.get("PROMPTLABEL_CHROMIUM", "/usr/bin/chromium")


def _console_error(message: Any, errors: list[str]) -> None:
    # An answer such as 401 or 409 is the page's business (it says so on screen); the browser
    # logs each as "Failed to load resource".
    if message.type == "error" and "Failed to load resource" not in message.text:
        errors.append(message.text)


def chromium_path() -> str | None:
    """Debian's Chromium (or ``PROMPTLABEL_CHROMIUM``), when it is installed."""
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which(CHROMIUM)


# Per module, not per session: Playwright's sync API keeps an event loop running in the main
# thread while it is started, and tests that run later in the session start their own there.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if chromium_path() is None:
        if os.environ.get("PROMPTLABEL_REQUIRE_BROWSER"):
            pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # Without the page's CSP: Playwright's waits evaluate strings, which the CSP forbids. It
    # also means a hostile text is proven inert by the page's rendering alone, not the CSP
    # (whose header tests/serve/api/test_review_page.py checks).
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: _console_error(message, errors))
    yield opened
    context.close()
    # A script error is a failed test even when the assertions passed.
    assert not errors, errors
