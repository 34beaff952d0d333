"""The README's screenshots of the Serving page: `./dev python tests/ui/screenshots.py`.

Starts `modelhost up --demo` on a home of its own, sends the demo model a few requests so the
plots have something to show, and saves docs/images/models.png and docs/images/model.png, taken
with the same Chromium the browser tests drive.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
from mlflow import MlflowClient
from playwright.sync_api import expect, sync_playwright

TESTS = Path(__file__).parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "ui"))

from conftest import find_chromium  # noqa: E402
from support import ONE_ROW, Platform, eventually  # noqa: E402

IMAGES = TESTS.parent / "docs" / "images"
DEMO = "iris-demo"
OTHERS = ("churn-forecast", "fraud-detector")


def main() -> None:
    chromium = find_chromium()
    if chromium is None:
        sys.exit("Install Chromium first: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as folder, Platform(Path(folder) / "home", "--demo") as up:
        registry = MlflowClient(tracking_uri=up.url, registry_uri=up.url)
        for name in OTHERS:  # not served: the list shows both kinds
            registry.create_registered_model(name)
        score = f"{up.url}/model/{DEMO}/1/invocations"
        eventually(lambda: _answers(score), timeout_s=300)
        for _ in range(40):  # a little traffic for the plots, spread over two samples
            httpx.post(score, json=ONE_ROW, timeout=30)
            time.sleep(0.25)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 360})
            page.goto(f"{up.url}/")
            page.get_by_role("link", name=DEMO).wait_for()
            page.screenshot(path=IMAGES / "models.png", full_page=True)
            page.goto(f"{up.url}/models/{DEMO}")
            page.get_by_role("button", name="Load Example").click()
            expect(page.get_by_role("textbox", name="Request")).not_to_be_empty()
            page.get_by_role("button", name="Send Request").click()
            page.locator(".answer-status").get_by_text("200").wait_for()
            page.get_by_role("tab", name="Metrics").click()
            page.get_by_text("v1 req/s").first.wait_for(timeout=60_000)
            page.screenshot(path=IMAGES / "model.png", full_page=True)
            browser.close()
    print(f"Saved {IMAGES / 'models.png'} and {IMAGES / 'model.png'}")


def _answers(url: str) -> None:
    assert httpx.post(url, json=ONE_ROW, timeout=30).status_code == 200


if __name__ == "__main__":
    main()
