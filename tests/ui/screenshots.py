"""The README's screenshots of the Serving page: `./dev python tests/ui/screenshots.py`.

Starts `modelhost up --demo` on a home of its own, sends the demo model a few requests so the
plots have something to show, runs two batch jobs on it, and saves docs/images/models.png,
docs/images/model.png and docs/images/batch-jobs.png, taken with the same Chromium the browser
tests drive.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
from mlflow import MlflowClient
from playwright.sync_api import expect, sync_playwright
from sklearn.datasets import load_iris

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
        _batch_jobs(up)
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
            page.get_by_role("tab", name="Batch Jobs").click()
            page.get_by_text("SUCCEEDED").first.wait_for()
            page.screenshot(path=IMAGES / "batch-jobs.png", full_page=True)
            browser.close()
    print(f"Saved models.png, model.png and batch-jobs.png in {IMAGES}")


def _batch_jobs(up: Platform) -> None:
    """A job that succeeds and one whose input lacks a column, both ended."""
    flowers, _ = load_iris(return_X_y=True, as_frame=True)
    data = up.home / "batch" / "data"
    data.mkdir(parents=True, exist_ok=True)
    pd.concat([flowers] * 2000).to_parquet(data / "flowers.parquet")
    flowers.drop(columns=flowers.columns[0]).to_csv(data / "partial.csv", index=False)
    jobs = f"{up.url}/api/2.0/modelhost/batch/jobs"
    for given, output in (("data/flowers.parquet", "scores/daily"), ("data/partial.csv", "x")):
        job = {"model_uri": f"models:/{DEMO}/1", "input": given, "output": output}
        url = f"{jobs}/{httpx.post(jobs, json=job, timeout=60).json()['job']['job_id']}"
        eventually(lambda url=url: _ended(url), timeout_s=300)


def _ended(url: str) -> None:
    assert httpx.get(url, timeout=30).json()["job"]["state"] in ("SUCCEEDED", "FAILED")


def _answers(url: str) -> None:
    assert httpx.post(url, json=ONE_ROW, timeout=30).status_code == 200


if __name__ == "__main__":
    main()
