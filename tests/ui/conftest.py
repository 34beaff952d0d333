"""The Serving page in a real browser: Debian's Chromium driven by Playwright.

Playwright's own browser download cannot be used (it fetches a build from outside the package
registries), so the tests drive the system's `chromium`, installing it with apt when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM_NAMES = ("chromium", "chromium-browser")
APT_TIMEOUT_S = 900


def find_chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Chromium, installed from Debian's packages when the machine has none."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("Install Chromium for the browser tests: `sudo apt-get install -y chromium`.")
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, env=quiet, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    found = find_chromium()
    assert found, "apt-get installed chromium, yet no chromium is on PATH"
    return found


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Browser]:
    """One headless browser for a module's tests."""
    with sync_playwright() as playwright:
        # Chromium's sandbox refuses to run as root, which the tests (and CI) are.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = playwright.chromium.launch(executable_path=chromium, args=args)
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    """A fresh browser session (no cookies) with a wide window; fails on a script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text
              else None)  # fmt: skip
    opened.set_default_timeout(30_000)
    yield opened
    context.close()
    assert errors == [], f"the page's scripts failed: {errors}"
