"""`GET /metrics` on the gateway counts what callers got, per model and version, in Prometheus form.

A platform serves one model; requests with known outcomes (200s with known row counts, a 400,
a 404 for a version that does not exist, a 404 for a model that does not exist) go through the
gateway, and its /metrics must say exactly that, with the model server's batch sizes relabelled
by model and version. That only admins read it with auth on is checked in
tests/auth/test_auth_platform.py, on the platform there.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import FEATURES, Platform, eventually, log_iris

API = "/api/2.0/preview/mlflow/endpoints"
MODEL = "prod.metrics.iris"


@pytest.fixture(scope="module")
def served(tmp_path_factory, iris):
    """An open platform serving MODEL version 1."""
    with Platform(tmp_path_factory.mktemp("metrics") / "home", experiment="metrics") as platform:
        assert log_iris(iris, MODEL) == "1"
        enabled = httpx.post(f"{platform.url}{API}/enable", json={"registered_model_name": MODEL})
        assert enabled.status_code == 200, enabled.text
        eventually(lambda: _ready(platform.url), timeout_s=180)
        yield platform


def _ready(url: str) -> None:
    shown = httpx.get(f"{url}{API}/list-versions", params={"registered_model_name": MODEL}).json()
    assert [v["state"] for v in shown["endpoint_versions"]] == ["VERSION_STATE_READY"], shown


def _rows(count: int) -> dict:
    return {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]] * count}}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each sample name's (labels, value) pairs."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_counts_latency_in_flight_and_batch_sizes_per_model_and_version(served):
    url = served.url
    with httpx.Client(base_url=url, timeout=60) as client:
        for rows in (1, 2, 3):
            answer = client.post(f"/model/{MODEL}/1/invocations", json=_rows(rows))
            assert answer.status_code == 200, answer.text
        bad = client.post(
            f"/model/{MODEL}/1/invocations",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert bad.status_code == 400, bad.text
        assert client.post(f"/model/{MODEL}/7/invocations", json=_rows(1)).status_code == 404
        assert client.post("/model/no.such.model/1/invocations", json=_rows(1)).status_code == 404
        page = client.get("/metrics")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    samples = _samples(page.text)
    requests = {
        (labels["model_name"], labels["model_version"], labels["status_code"]): value
        for labels, value in samples["modelhost_gateway_requests_total"]
    }
    # An unknown version has no version label; an unknown model's name is never a label.
    assert requests == {
        (MODEL, "1", "200"): 3,
        (MODEL, "1", "400"): 1,
        (MODEL, "", "404"): 1,
        ("", "", "404"): 1,
    }
    latency_counts = {
        (labels["model_name"], labels["model_version"]): value
        for labels, value in samples["modelhost_gateway_request_duration_seconds_count"]
    }
    assert latency_counts == {(MODEL, "1"): 4, (MODEL, ""): 1, ("", ""): 1}
    buckets = [
        (float(labels["le"]), value)
        for labels, value in samples["modelhost_gateway_request_duration_seconds_bucket"]
        if (labels["model_name"], labels["model_version"]) == (MODEL, "1")
    ]
    assert buckets[-1] == (float("inf"), 4)
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert any(0.001 <= bound <= 0.01 for bound, _ in buckets), "buckets for ms-level scoring"
    in_flight = {
        labels["model_name"]: value
        for labels, value in samples["modelhost_gateway_requests_in_flight"]
    }
    assert in_flight == {MODEL: 0, "": 0}

    # The model server's own count: 6 rows scored, in at most 3 predict calls; the bad
    # request never reached the model.
    version_1 = {"model_name": MODEL, "model_version": "1"}
    assert samples["modelhost_batch_rows_sum"] == [(version_1, 6)]
    [(_, calls)] = samples["modelhost_batch_rows_count"]
    assert 1 <= calls <= 3
    [(labels, _)] = samples["modelhost_predict_duration_seconds_count"]
    assert labels == version_1


def test_metrics_take_only_get(served):
    answer = httpx.post(f"{served.url}/metrics", timeout=30)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"
    assert answer.json()["error_code"]


def test_a_crowd_is_answered_one_by_one_and_counted(served):
    """Requests that arrive together travel to the model server together; each is still
    answered on its own: the bad ones fail alone, and every answer is counted."""
    url = served.url
    bad = {7: b"{not json", 20: b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}'}
    score = f"{url}/model/{MODEL}/1/invocations"
    alone = {rows: httpx.post(score, json=_rows(rows)).json() for rows in (1, 2, 3)}
    before = _version_one(httpx.get(f"{url}/metrics").text)
    crowd = 40
    ready = threading.Barrier(crowd)

    def send(at: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get("/health")  # connected before the crowd moves
            ready.wait(timeout=60)
            body = bad.get(at, orjson.dumps(_rows(at % 3 + 1)))
            headers = {"Content-Type": "application/json"}
            return client.post(score, content=body, headers=headers)

    with ThreadPoolExecutor(crowd) as pool:
        answers = list(pool.map(send, range(crowd)))

    for at, answer in enumerate(answers):
        if at in bad:
            assert answer.status_code == 400, answer.text
            assert answer.json()["error_code"] == "BAD_REQUEST"
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json() == alone[at % 3 + 1]
            assert answer.headers["x-modelhost-version"] == "1"
    after = _version_one(httpx.get(f"{url}/metrics").text)
    counted = {status: after[status] - before.get(status, 0) for status in after}
    assert counted == {"200": crowd - len(bad), "400": len(bad)}


def _version_one(page: str) -> dict[str, float]:
    """Requests to MODEL version 1 counted by /metrics, by status code."""
    return {
        labels["status_code"]: value
        for labels, value in _samples(page)["modelhost_gateway_requests_total"]
        if labels["model_name"] == MODEL and labels.get("model_version") == "1"
    }
