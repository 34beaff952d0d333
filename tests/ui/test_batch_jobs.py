"""A model's batch jobs on its page: listed with their progress, refreshed while it is open.

The jobs score the sleeper toy model, whose rows take as long as their `seconds` say.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from playwright.sync_api import expect
from support import Platform, eventually

MODEL = "batch-page"
JOBS = "/api/2.0/modelhost/batch/jobs"
TESTS = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A platform with one sleeper model, not served, and a batch folder with two inputs."""
    root = Path(tempfile.mkdtemp(prefix="modelhost-batch-page-"))  # the model user reaches it
    pd.DataFrame({"x": range(10), "seconds": 0.0}).to_csv(root / "fast.csv", index=False)
    pd.DataFrame({"x": range(60), "seconds": 1.0}).to_csv(root / "slow.csv", index=False)
    home = tmp_path_factory.mktemp("batch-page") / "home"
    running = Platform(home, "--batch-root", str(root), experiment="batch-page")
    try:
        running.__enter__()
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model", python_model=str(TESTS / "toys" / "sleeper.py"),
                registered_model_name=MODEL, pip_requirements=["mlflow", "pandas"],
            )  # fmt: skip
        yield running
    finally:
        running.__exit__()
        shutil.rmtree(root, ignore_errors=True)


def submit(platform: Platform, given_input: str, output: str) -> str:
    body = {"model_uri": f"models:/{MODEL}/1", "input": given_input, "output": output,
            "chunk_rows": 1, "env_manager": "local"}  # fmt: skip
    answer = httpx.post(platform.url + JOBS, json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["job"]["job_id"]


def state(platform: Platform, job_id: str) -> str:
    return httpx.get(f"{platform.url}{JOBS}/{job_id}", timeout=60).json()["job"]["state"]


def test_the_page_lists_a_models_jobs_with_their_progress(platform, page):
    done = submit(platform, "fast.csv", "out/fast")
    eventually(lambda: _is(state(platform, done), "SUCCEEDED"), timeout_s=120)

    page.goto(f"{platform.url}/models/{MODEL}")
    jobs = page.get_by_role("region", name="Batch Jobs")
    finished = jobs.get_by_role("row").filter(has=page.get_by_role("rowheader", name=done))
    expect(finished).to_contain_text("Succeeded")
    expect(finished).to_contain_text("10 / 10")

    # A job started while the page is open shows up, runs, and shows how it ended.
    slow = submit(platform, "slow.csv", "out/slow")
    running = jobs.get_by_role("row").filter(has=page.get_by_role("rowheader", name=slow))
    expect(running).to_contain_text("Running", timeout=120_000)
    cancelled = httpx.post(f"{platform.url}{JOBS}/{slow}/cancel", timeout=60)
    assert cancelled.status_code == 200, cancelled.text
    expect(running).to_contain_text("Cancelled", timeout=60_000)


def _is(found: str, wanted: str) -> None:
    assert found == wanted
