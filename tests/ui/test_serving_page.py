"""A model's Serving page in a browser: turn serving on, query it, tune it, read its logs, stop."""

from __future__ import annotations

import json

import httpx
import pytest
from mlflow import MlflowClient
from playwright.sync_api import Page, expect
from support import Platform, log_iris

MODEL = "iris-page"
READY_TIMEOUT_MS = 240_000  # a model server's first start on a busy machine
SAMPLED_TIMEOUT_MS = 60_000  # the gateway samples its counters every few seconds
SERVING = "/api/2.0/preview/mlflow/endpoints"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, iris):
    """A platform whose registry has one iris model, aliased `champion`, not served yet."""
    with Platform(tmp_path_factory.mktemp("page") / "home", experiment="page") as running:
        version = log_iris(iris, MODEL)
        MlflowClient().set_registered_model_alias(MODEL, "champion", version)
        yield running


def api(platform: Platform, action: str, **params: str) -> httpx.Response:
    params = {"registered_model_name": MODEL, **params}
    return httpx.get(f"{platform.url}{SERVING}/{action}", params=params, timeout=30)


def newest_event(platform: Platform, about: str) -> str:
    """The message of the newest event of the model that mentions `about`."""
    events = api(platform, "events").json()["events"]
    return next(e["message"] for e in events if about in e["message"])


def send(page: Page, body: str | None = None) -> None:
    if body is not None:
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

    # The version's logged input example, sent to the alias; its predictions, one per row.
    expect(version_1).to_contain_text("@champion")
    page.get_by_label("Send to").select_option("champion")
    page.get_by_role("button", name="Load Example").click()
    example = httpx.get(f"{platform.url}/api/2.0/modelhost/models/example", timeout=30,
                        params={"registered_model_name": MODEL, "version": "1"})  # fmt: skip
    expect(page.get_by_role("textbox", name="Request")).not_to_be_empty()
    loaded = page.get_by_role("textbox", name="Request").input_value()
    assert json.loads(loaded) == example.json()["example"]
    send(page)
    answer_status = page.locator(".answer-status")
    expect(answer_status).to_contain_text("200")
    expect(answer_status).to_contain_text("answered by version 1")
    predictions = json.loads(page.get_by_label("Response").inner_text())["predictions"]
    assert len(predictions) == 2 and set(predictions) <= {0, 1, 2}

    # A body the scoring protocol refuses: its 400 and the API's own message.
    bad = '{"rows": [[5.1, 3.5, 1.4, 0.2]]}'
    expected = httpx.post(f"{platform.url}/model/{MODEL}/1/invocations", content=bad,
                          headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert expected.status_code == 400
    send(page, bad)
    expect(answer_status).to_contain_text("400")
    expect(answer_status).to_contain_text(expected.json()["message"])

    # Model Versions: each version's URLs by version and by alias, ready to copy; its logs.
    for label, ref in (("URL of version 1", "1"), ("URL of alias champion", "champion")):
        url = f"{platform.url}/model/{MODEL}/{ref}/invocations"
        expect(versions.get_by_role("textbox", name=label)).to_have_value(url)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    version_1.get_by_role("button", name="Copy").first.click()
    expect(version_1.get_by_role("status").first).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"{platform.url}/model/{MODEL}/1/invocations"
    version_1.get_by_role("button", name="Logs").click()
    first_line = api(platform, "logs", endpoint_version_name="1").json()["logs"].splitlines()[0]
    expect(page.get_by_role("region", name="Logs of version 1")).to_contain_text(first_line)

    # Metrics: the requests just sent, plotted per version.
    page.get_by_role("tab", name="Metrics").click()
    requests_plot = page.get_by_role("figure").filter(has_text="Requests per second")
    expect(requests_plot).to_contain_text("v1 req/s", timeout=SAMPLED_TIMEOUT_MS)
    expect(requests_plot.locator("canvas")).to_be_visible()

    # Model Events, newest first: who turned serving on.
    page.get_by_role("tab", name="Model Events").click()
    expect(page.get_by_role("tabpanel")).to_contain_text("Serving turned on.")

    # Cluster Settings: saved, applied (the model's servers replaced), shown when opened again.
    page.get_by_role("tab", name="Cluster Settings").click()
    expect(page.get_by_label("Worker processes")).to_be_visible()
    # Replicas are placed on a Ray cluster: the local engine's page offers none of that (and
    # its Save sends none, which the local engine would refuse).
    for cluster_only in ("CPUs per replica", "Memory per replica (MB)", "Min replicas",
                         "Max replicas"):  # fmt: skip
        expect(page.get_by_label(cluster_only, exact=True)).to_have_count(1)  # there, hidden
        expect(page.get_by_label(cluster_only, exact=True)).to_be_hidden()
    page.get_by_label("Worker processes").fill("2")
    page.get_by_role("button", name="Add tag").click()
    page.get_by_label("Tag key").last.fill("team")
    page.get_by_label("Tag value").last.fill("fraud")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("tabpanel").get_by_role("status")).to_contain_text("Saved")
    settings = api(platform, "get-status").json()["endpoint_status"]["settings"]
    assert settings["workers"] == 2 and settings["tags"] == [{"key": "team", "value": "fraud"}]
    page.reload()
    expect(head).to_contain_text("Ready", timeout=READY_TIMEOUT_MS)
    page.get_by_role("tab", name="Cluster Settings").click()
    expect(page.get_by_label("Worker processes")).to_have_value("2")
    expect(page.get_by_label("Tag key")).to_have_value("team")
    page.get_by_role("tab", name="Model Events").click()
    expect(page.get_by_role("tabpanel")).to_contain_text(newest_event(platform, "workers"))
    send(page, json.dumps(example.json()["example"]))
    expect(answer_status).to_contain_text("200", timeout=READY_TIMEOUT_MS)

    # A tag deleted is gone once saved.
    page.get_by_role("tab", name="Cluster Settings").click()
    page.get_by_role("row").filter(has=page.get_by_label("Tag key")).get_by_role(
        "button", name="Delete"
    ).click()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("tabpanel").get_by_role("status")).to_contain_text("Saved")
    assert api(platform, "get-status").json()["endpoint_status"]["settings"]["tags"] == []

    # The models list: serving state and served versions, a link back to this page.
    page.get_by_role("link", name="Models").first.click()
    listed = page.get_by_role("row").filter(has=page.get_by_role("link", name=MODEL))
    expect(listed.get_by_role("cell").nth(0)).to_have_text("Ready")
    expect(listed.get_by_role("cell").nth(1)).to_have_text("1")
    listed.get_by_role("link", name=MODEL).click()

    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Enable Serving")).to_be_visible()
    expect(head).to_contain_text("Off")
    assert api(platform, "get-status").status_code == 404
