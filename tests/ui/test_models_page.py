"""The models list, and the page's files as the gateway serves them."""

from __future__ import annotations

import httpx
import pytest
from mlflow import MlflowClient
from playwright.sync_api import expect
from support import Platform

TEAM = [f"churn-{n:02d}" for n in range(25)]
FRAUD = ["fraud-cards", "fraud-loans", "fraud-wires"]
PAGE_SIZE = 25
JAVASCRIPT_BUDGET = 100_000  # bytes on first load, uPlot included


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A platform whose registry has more models than one page of the list shows."""
    with Platform(tmp_path_factory.mktemp("models-page") / "home") as running:
        client = MlflowClient(tracking_uri=running.url, registry_uri=running.url)
        for name in TEAM + FRAUD:
            client.create_registered_model(name, description=f"The {name} model.")
        yield running


def test_the_list_pages_through_every_model_and_searches_by_name(platform, page):
    page.goto(f"{platform.url}/")
    rows = page.get_by_role("table").get_by_role("rowheader")
    expect(rows).to_have_count(PAGE_SIZE)
    expect(rows.first).to_have_text("churn-00")
    page.get_by_role("button", name="Next page").click()
    expect(rows).to_have_text(FRAUD)
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(rows).to_have_count(PAGE_SIZE)

    page.get_by_label("Search models").fill("fraud")
    expect(rows).to_have_text(FRAUD)
    expect(page.get_by_role("row", name="fraud-loans")).to_contain_text("Off")
    page.get_by_label("Search models").fill("no such model")
    expect(page.get_by_role("table")).to_contain_text("No model's name contains")

    page.get_by_label("Search models").fill("loans")
    page.get_by_role("link", name="fraud-loans").click()
    expect(page).to_have_url(f"{platform.url}/models/fraud-loans")
    expect(page.get_by_role("heading", level=1)).to_have_text("fraud-loans")
    expect(page.get_by_text("The fraud-loans model.")).to_be_visible()
    expect(page.get_by_role("button", name="Enable Serving")).to_be_visible()
    expect(page.get_by_role("link", name="Open in MLflow")).to_have_attribute(
        "href", "/mlflow/#/models/fraud-loans"
    )


def test_a_model_the_registry_does_not_have_says_so(platform, page):
    page.goto(f"{platform.url}/models/no-such-model")
    expect(page.get_by_role("alert")).to_contain_text("no model named “no-such-model”")
    expect(page.get_by_role("button", name="Enable Serving")).to_have_count(0)


def test_first_load_is_under_100_kb_of_javascript(platform, browser):
    for path in ("/", "/models/fraud-cards"):
        context = browser.new_context()  # nothing cached: a first load
        page = context.new_page()
        scripts = []
        page.on("response", lambda r, seen=scripts: seen.append(r) if r.url.endswith(".js") else 0)
        page.goto(f"{platform.url}{path}", wait_until="networkidle")
        sizes = {r.url.rsplit("/", 1)[1]: len(r.body()) for r in scripts}
        context.close()
        assert {"app.js", "uPlot.iife.min.js", "model.js"} <= sizes.keys(), sizes
        assert sum(sizes.values()) < JAVASCRIPT_BUDGET, sizes


def test_mlflow_links_to_runs_land_on_mlflows_own_ui(platform, page):
    # MLflow prints "View run" links as <tracking uri>/#/experiments/...: the gateway's /.
    page.goto(f"{platform.url}/#/experiments/0/runs/abc")
    expect(page).to_have_url(f"{platform.url}/mlflow/#/experiments/0/runs/abc")


def test_the_pages_files_are_public_and_locked_down(platform):
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        for path in ("/", "/models/fraud-cards", "/models/a/b", "/static/app.js"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-security-policy"].startswith("default-src 'self'")
            assert answer.headers["x-content-type-options"] == "nosniff"
            again = client.get(path, headers={"If-None-Match": answer.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        head = client.head("/static/uPlot.iife.min.js")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"].startswith("text/javascript")
        assert int(head.headers["content-length"]) == len(client.get(head.url).content)
        assert "MIT" in client.get("/static/uPlot.LICENSE").text

        for path in ("/static/nope.js", "/static/.hidden", "/static/ui.py"):
            missing = client.get(path)
            assert missing.status_code == 404, path
            assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        # A way out of the page's folder is refused (by the gateway's path check or here).
        for path in ("/static/%2e%2e%2fui.py", "/static/..%2f..%2fconfig.py"):
            outside = client.get(path)
            assert outside.status_code in (400, 404), path
            assert "error_code" in outside.json()
        refused = client.post("/models/fraud-cards", json={})
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
