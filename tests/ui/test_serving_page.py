"""A model's Serving page in a browser: turn serving on, query it, tune it, read its logs, stop."""

from __future__ import annotations

import json

import httpx
import mlflow
import pytest
from playwright.sync_api import Page, expect
from support import ONE_ROW, Platform, log_iris

MODEL = "iris-page"
READY_TIMEOUT_MS = 240_000  # a model server's first start on a busy machine
SERVING = "/api/2.0/preview/mlflow/endpoints"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, iris):
    """A platform whose registry has one iris model, not served yet."""
    with Platform(tmp_path_factory.mktemp("page") / "home") as running:
        mlflow.set_tracking_uri(running.url)
        mlflow.set_experiment("page")
        log_iris(iris, MODEL)
        yield running
    mlflow.set_tracking_uri(None)


def status(platform: Platform) -> httpx.Response:
    return httpx.get(
        f"{platform.url}{SERVING}/get-status", params={"registered_model_name": MODEL}, timeout=30
    )


def newest_event(platform: Platform, about: str) -> str:
    """The message of the newest event of the model that mentions `about`."""
    answer = httpx.get(f"{platform.url}{SERVING}/events", timeout=30,
                       params={"registered_model_name": MODEL})  # fmt: skip
    return next(e["message"] for e in answer.json()["events"] if about in e["message"])


def send(page: Page, body: str) -> None:
    page.get_by_role("textbox", name="Request").fill(body)
    page.get_by_role("button", name="Send Request").click()


def test_enable_query_tune_read_logs_and_stop(platform, page):
    page.goto(f"{platform.url}/models/{MODEL}")
    head = page.get_by_role("region", name="Serving")
    expect(head).to_contain_text("Off")
    expect(page.get_by_text("Serving is off for this model.")).to_be_visible()

    page.get_by_role("button", name="Enable Serving").click()
    expect(head.get_by_role("button", name="Stop")).to_be_visible()
    expect(head).to_contain_text("Ready", timeout=READY_TIMEOUT_MS)
    versions = page.get_by_role("tabpanel")  # Model Versions, the first tab
    version_1 = versions.get_by_role("row").filter(has=page.get_by_role("rowheader", name="1"))
    expect(version_1).to_contain_text("Ready", timeout=READY_TIMEOUT_MS)

    # A prediction for one flower, from the version the box sends to by default.
    expect(page.get_by_label("Send to")).to_have_value("1")
    send(page, json.dumps(ONE_ROW))
    answer = page.get_by_label("Response")
    expect(page.locator(".answer-status")).to_contain_text("200")
    expect(page.locator(".answer-status")).to_contain_text("answered by version 1")
    predictions = json.loads(answer.inner_text())["predictions"]
    assert len(predictions) == 1 and predictions[0] in (0, 1, 2)

    # A body the scoring protocol refuses: its 400 and the API's own message.
    bad = '{"rows": [[5.1, 3.5, 1.4, 0.2]]}'
    expected = httpx.post(f"{platform.url}/model/{MODEL}/1/invocations", content=bad,
                          headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert expected.status_code == 400
    send(page, bad)
    expect(page.locator(".answer-status")).to_contain_text("400")
    expect(page.locator(".answer-status")).to_contain_text(expected.json()["message"])

    # Model Versions: each version's URL, ready to copy, and its logs.
    expect(versions.get_by_role("textbox", name="URL of version 1")).to_have_value(
        f"{platform.url}/model/{MODEL}/1/invocations"
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    version_1.get_by_role("button", name="Copy").first.click()
    expect(version_1.get_by_role("status").first).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"{platform.url}/model/{MODEL}/1/invocations"
    versions.get_by_role("button", name="Logs").click()
    asked = {"registered_model_name": MODEL, "endpoint_version_name": "1"}
    logs = httpx.get(f"{platform.url}{SERVING}/logs", params=asked, timeout=30)
    first_line = logs.json()["logs"].splitlines()[0]
    expect(page.get_by_role("region", name="Logs of version 1")).to_contain_text(first_line)

    # Model Events, newest first: who turned serving on.
    page.get_by_role("tab", name="Model Events").click()
    expect(page.get_by_role("tabpanel")).to_contain_text("Serving turned on.")

    # Cluster Settings: saved, and the same when the page is opened again.
    page.get_by_role("tab", name="Cluster Settings").click()
    page.get_by_label("Environment manager").select_option("local")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("tabpanel").get_by_role("status")).to_contain_text("Saved")
    assert status(platform).json()["endpoint_status"]["settings"]["env_manager"] == "local"
    page.reload()
    page.get_by_role("tab", name="Cluster Settings").click()
    expect(page.get_by_label("Environment manager")).to_have_value("local")
    page.get_by_role("tab", name="Model Events").click()
    expect(page.get_by_role("tabpanel")).to_contain_text(newest_event(platform, "local"))

    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Enable Serving")).to_be_visible()
    expect(head).to_contain_text("Off")
    assert status(platform).status_code == 404
