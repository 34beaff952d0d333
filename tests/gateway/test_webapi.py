"""What the Serving page asks of the gateway, with auth off: counts, stages and aliases, a
version's example, the metrics series, the session and level everyone has, MLflow's UI.

One open platform serves a model with two versions: version 1 logged with an input example,
version 2 with only a signature, in Production and aliased `champion`.
"""

from __future__ import annotations

import re
import warnings

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from support import FEATURES, ONE_ROW, Platform, eventually, log_iris

API = "/api/2.0/preview/mlflow/endpoints"
PAGE_API = "/api/2.0/modelhost"
MODEL = "web.iris"


@pytest.fixture(scope="module")
def served(tmp_path_factory, iris):
    """An open platform serving MODEL, both versions ready."""
    with Platform(tmp_path_factory.mktemp("webapi") / "home", experiment="webapi") as platform:
        assert log_iris(iris, MODEL) == "1"
        with mlflow.start_run():
            model = LogisticRegression(max_iter=1000).fit(iris, [0, 1, 2] * 50)
            mlflow.sklearn.log_model(
                model, name="model", registered_model_name=MODEL,
                signature=infer_signature(iris, model.predict(iris)),
                pip_requirements=["mlflow", "scikit-learn"],
            )  # fmt: skip
        client = MlflowClient()
        with warnings.catch_warnings():  # stages are deprecated in MLflow, yet still in use
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(MODEL, "2", "Production")
        client.set_registered_model_alias(MODEL, "champion", "2")
        enabled = httpx.post(f"{platform.url}{API}/enable", json={"registered_model_name": MODEL})
        assert enabled.status_code == 200, enabled.text
        eventually(lambda: _ready(platform.url), timeout_s=180)
        yield platform


def _versions(url: str) -> list[dict]:
    answer = httpx.get(f"{url}{API}/list-versions", params={"registered_model_name": MODEL})
    assert answer.status_code == 200, answer.text
    return answer.json()["endpoint_versions"]


def _ready(url: str) -> None:
    shown = _versions(url)
    assert [v["state"] for v in shown] == ["VERSION_STATE_READY"] * 2, shown
    # The stage and the alias route once the registry's latest reading reached the table.
    assert shown[1]["stages"] == ["Production"] and shown[1]["aliases"] == ["champion"], shown


def test_list_counts_served_versions_and_list_versions_names_stages_and_aliases(served):
    endpoints = httpx.get(f"{served.url}{API}/list").json()["endpoints"]
    assert [(e["registered_model_name"], e["served_versions"]) for e in endpoints] == [(MODEL, 2)]
    shown = {v["endpoint_version_name"]: (v["stages"], v["aliases"]) for v in _versions(served.url)}
    assert shown == {"1": ([], []), "2": (["Production"], ["champion"])}
    for ref in ("production", "champion"):  # what the page's URLs by stage and alias reach
        answer = httpx.post(f"{served.url}/model/{MODEL}/{ref}/invocations", json=ONE_ROW)
        assert answer.status_code == 200 and answer.headers["x-modelhost-version"] == "2"


def test_examples_load_and_score(served):
    def example(version: str) -> httpx.Response:
        query = {"registered_model_name": MODEL, "version": version}
        return httpx.get(f"{served.url}{PAGE_API}/models/example", params=query, timeout=60)

    logged = example("1").json()
    assert logged["source"] == "input_example"
    # log_iris logs the first two rows of iris as its input example.
    assert logged["example"]["dataframe_split"]["columns"] == FEATURES
    assert logged["example"]["dataframe_split"]["data"] == [
        [5.1, 3.5, 1.4, 0.2],
        [4.9, 3.0, 1.4, 0.2],
    ]
    built = example("2").json()
    assert built == {
        "source": "signature",
        "example": {"dataframe_split": {"columns": FEATURES, "data": [[0.0, 0.0, 0.0, 0.0]]}},
    }
    for version, shown in (("1", logged), ("2", built)):  # Load Example, then Send Request
        answer = httpx.post(
            f"{served.url}/model/{MODEL}/{version}/invocations", json=shown["example"]
        )
        assert answer.status_code == 200, answer.text
    missing = example("9")
    assert missing.status_code == 404 and "Version 9" in missing.json()["message"]
    unnamed = httpx.get(f"{served.url}{PAGE_API}/models/example", params={"version": "1"})
    assert unnamed.status_code == 400
    assert "registered_model_name" in unnamed.json()["message"]


def test_series_shows_each_versions_requests_latency_and_errors(served):
    url = f"{served.url}{PAGE_API}/metrics/series"
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for _ in range(7):
            assert client.post(f"/model/{MODEL}/1/invocations", json=ONE_ROW).status_code == 200
        bad = client.post(f"/model/{MODEL}/1/invocations", json={"dataframe_split": {}})
        assert bad.status_code == 400
        for _ in range(3):
            assert client.post(f"/model/{MODEL}/2/invocations", json=ONE_ROW).status_code == 200
    # Every request the gateway counted (this module's other tests scored too) is in the
    # series once it has been sampled.
    counted = _counted(served.url)
    assert counted["1"][0] >= 8 and counted["1"][1] == 1 and counted["2"][0] >= 3

    def sampled() -> dict:
        shown = httpx.get(url, params={"registered_model_name": MODEL}).json()
        assert shown["interval_s"] == 5
        totals = {
            version: (sum(p["requests"] for p in points), sum(p["errors"] for p in points))
            for version, points in shown["versions"].items()
        }
        assert totals == counted
        return shown

    shown = eventually(sampled, timeout_s=60)
    points = shown["versions"]["1"]
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)  # oldest first
    busy = [p for p in points if p["requests"] > 0]
    assert busy and all(p["p50_ms"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in busy)
    assert all(p["p50_ms"] is None for p in points if p["requests"] == 0)
    assert all(p["requests_per_s"] > 0 for p in busy)
    assert sum(p["errors"] for p in points) == 1  # the one 400
    other = httpx.get(url, params={"registered_model_name": "no.such.model"}).json()
    assert other == {"interval_s": 5, "versions": {}}


def _counted(url: str) -> dict[str, tuple[int, int]]:
    """(requests, errors) per version of MODEL, as the gateway's /metrics counts them."""
    counted: dict[str, tuple[int, int]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "modelhost_gateway_requests_total" or labels["model_name"] != MODEL:
                continue
            if not labels["model_version"]:
                continue
            requests, errors = counted.get(labels["model_version"], (0, 0))
            error = int(labels["status_code"]) >= 400
            counted[labels["model_version"]] = (
                requests + int(sample.value),
                errors + int(sample.value) * error,
            )
    return counted


def test_session_and_permission_say_everything_is_allowed(served):
    session = httpx.get(f"{served.url}{PAGE_API}/session")
    assert session.json() == {"auth": False, "user": None, "admin": True}
    signed = httpx.post(f"{served.url}{PAGE_API}/session", json={"token": "anything"})
    assert signed.status_code == 200 and "set-cookie" not in signed.headers
    level = httpx.get(
        f"{served.url}{PAGE_API}/models/permission", params={"registered_model_name": MODEL}
    )
    assert level.json() == {"registered_model_name": MODEL, "permission_level": "MANAGE"}
    users = httpx.get(f"{served.url}{PAGE_API}/users/list")
    assert users.status_code == 404 and "auth on" in users.json()["message"]


def test_changes_from_another_sites_page_are_refused(served):
    body = {"registered_model_name": MODEL}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}):  # fmt: skip
        refused = httpx.post(f"{served.url}{API}/disable", json=body, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error_code"] == "PERMISSION_DENIED"
    assert (
        httpx.get(f"{served.url}{API}/get-status", params=body).json()["endpoint_status"]["state"]
        == "ENDPOINT_STATE_READY"
    )
    # The gateway's own page may change things.
    own = httpx.post(
        f"{served.url}{API}/update-settings",
        json={**body, "env_manager": "auto"},
        headers={"Origin": served.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert own.status_code == 200, own.text


def test_mlflow_ui_is_served_under_mlflow(served):
    index = httpx.get(f"{served.url}/mlflow/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    script = re.search(r'src="(?:\./)?(static-files/[^"]+\.js)"', index.text)
    assert script, index.text[:500]
    loaded = httpx.get(f"{served.url}/mlflow/{script.group(1)}")
    assert loaded.status_code == 200 and "javascript" in loaded.headers["content-type"]
    assert len(loaded.content) > 10_000
    # Its calls, relative to its index, reach the registry.
    found = httpx.get(f"{served.url}/mlflow/ajax-api/2.0/mlflow/registered-models/search")
    assert found.status_code == 200
    assert [m["name"] for m in found.json()["registered_models"]] == [MODEL]
    # The MLmodel its model version page shows.
    mlmodel = httpx.get(
        f"{served.url}/mlflow/model-versions/get-artifact",
        params={"path": "MLmodel", "name": MODEL, "version": "1"},
    )
    assert mlmodel.status_code == 200 and "flavors:" in mlmodel.text
    assert httpx.get(f"{served.url}/mlflow/nothing/here").status_code == 404
    assert httpx.post(f"{served.url}/mlflow/").status_code == 405
