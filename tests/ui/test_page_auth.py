"""The Serving page with auth on: it asks for a token, and shows each identity what it may do."""

from __future__ import annotations

import re

import mlflow
import pytest
from playwright.sync_api import Page, expect
from support import Platform, log_iris, modelhost, signed_in_as

MODEL = "iris-guarded"
SERVING = "/api/2.0/preview/mlflow/endpoints"


@pytest.fixture(scope="module")
def world(tmp_path_factory, iris):
    """A platform with auth on, a served model, and a reader and a manager of it."""
    with Platform(tmp_path_factory.mktemp("page-auth") / "home", "--auth") as platform:
        printed = re.findall(r"^\s+(mh_\S+)$", platform.log_path.read_text(), re.MULTILINE)
        tokens = {"admin": printed[0]}
        for who in ("reader", "manager"):
            made = modelhost(platform.url, tokens["admin"], "users", "create", who)
            assert made.returncode == 0, made.stderr
            made = modelhost(platform.url, tokens["admin"], "tokens", "create", "--user", who)
            assert made.returncode == 0, made.stderr
            tokens[who] = made.stdout.strip()
        with signed_in_as(platform.url, tokens["admin"]):
            mlflow.set_experiment("page-auth")
            log_iris(iris, MODEL)
        for who, level in (("reader", "READ"), ("manager", "MANAGE")):
            granted = modelhost(platform.url, tokens["admin"], "permissions", "grant",
                                MODEL, "--user", who, "--level", level)  # fmt: skip
            assert granted.returncode == 0, granted.stderr
        enabled = modelhost(platform.url, tokens["admin"], "serving", "enable", MODEL)
        assert enabled.returncode == 0, enabled.stderr
        yield platform, tokens


def sign_in(page: Page, token: str) -> None:
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_the_page_asks_for_a_token_and_keeps_the_session_for_the_browser_only(world, page):
    platform, tokens = world
    page.goto(f"{platform.url}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    sign_in(page, "mh_not-a-token")
    expect(page.get_by_role("alert")).to_contain_text("unknown")
    sign_in(page, tokens["reader"])
    expect(page.get_by_text("Signed in as reader")).to_be_visible()
    expect(page.get_by_role("link", name=MODEL)).to_be_visible()
    assert tokens["reader"] not in page.url
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "modelhost_session" and cookie["httpOnly"]
    assert cookie["expires"] == -1, "gone when the browser session ends"
    assert tokens["reader"] not in cookie["value"]

    page.reload()
    expect(page.get_by_text("Signed in as reader")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(f"{platform.url}/models/{MODEL}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_reader_sees_the_model_but_no_serving_controls(world, page):
    platform, tokens = world
    page.goto(f"{platform.url}/models/{MODEL}")
    sign_in(page, tokens["reader"])
    head = page.get_by_role("region", name="Serving")
    expect(head).to_contain_text(re.compile("Pending|Ready"))
    expect(page.get_by_role("tab", name="Model Versions")).to_be_visible()
    expect(page.get_by_role("tab", name="Model Events")).to_be_visible()
    expect(page.get_by_role("tab", name="Cluster Settings")).to_have_count(0)
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.get_by_role("button", name="Logs")).to_have_count(0)
    # The API refuses what the page does not offer, to the reader's own browser session.
    refused = page.evaluate(
        """([url, name]) => fetch(url, {method: "POST", body: JSON.stringify(
            {registered_model_name: name}), headers: {"Content-Type": "application/json"}})
            .then((answer) => answer.status)""",
        [f"{SERVING}/disable", MODEL],
    )
    assert refused == 403


def test_a_manager_gets_stop_and_cluster_settings(world, page):
    platform, tokens = world
    page.goto(f"{platform.url}/models/{MODEL}")
    sign_in(page, tokens["manager"])
    expect(page.get_by_text("Signed in as manager")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_role("tab", name="Cluster Settings")).to_be_visible()
