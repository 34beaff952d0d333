"""Bad input gets a clear MLflow error body, never reaches the model and never stops the server."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
from support import Server

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROW = [5.1, 3.5, 1.4, 0.2]


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "message"}
    for word in words:
        assert word in body["message"], body["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"dataframe_split": {"columns": [', ["not valid JSON", "dataframe_split"]),
        (b"", ["not valid JSON"]),
        (b"42", ["Expected a JSON object", "dataframe_split"]),
        (b'{"rows": [[1, 2, 3, 4]]}', ["dataframe_split", "'rows'"]),
        (
            json.dumps({"dataframe_split": {"columns": FEATURES, "data": [ROW]}, "inputs": [ROW]}),
            ["exactly one", "'inputs'"],
        ),
        (json.dumps({"dataframe_split": [ROW]}), ["split format must be a dictionary"]),
        (json.dumps({"dataframe_records": {"a": 1}}), ["must be a list of records"]),
        (
            json.dumps({"dataframe_split": {"columns": FEATURES[:3], "data": [ROW[:3]]}}),
            ["missing inputs", "petal width (cm)", "expects input"],
        ),
        (
            json.dumps({"dataframe_split": {"columns": FEATURES, "data": [["a", 1, 2, 3]]}}),
            ["sepal length (cm)"],
        ),
        (
            json.dumps({"dataframe_split": {"columns": FEATURES, "data": [[1, 2]]}}),
            ["dataframe_split"],
        ),
        (
            json.dumps({"dataframe_split": {"columns": FEATURES, "data": [ROW]}, "params": 3}),
            ["'params' must be a JSON object"],
        ),
        (json.dumps({"input_data": [ROW], "extra": 1}), ["'extra'", "input_data"]),
    ],
    ids=[
        "malformed",
        "empty",
        "scalar",
        "wrong key",
        "two keys",
        "split not a dict",
        "records not a list",
        "missing column",
        "mistyped column",
        "short row",
        "bad params",
        "azure extra field",
    ],
)
def test_bad_json_is_400_with_what_was_expected(servers, body, words):
    assert_error(servers["classifier"].invoke(body), 400, *words)


def test_bad_csv_and_parquet_are_400(servers):
    classifier = servers["classifier"]
    assert_error(classifier.invoke("a,b\n1,2\n", "text/csv"), 400, "missing inputs")
    assert_error(classifier.invoke(b"\xff\xfe", "text/csv"), 400, "UTF-8")
    assert_error(
        classifier.invoke(b"not parquet", "application/vnd.apache.parquet"), 400, "Parquet"
    )


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("text/plain", ["Unsupported Content-Type", "application/json"]),
        ("application/x-www-form-urlencoded", ["Unsupported Content-Type"]),
        ("application/json; charset=latin-1", ["charset"]),
        ("application/json; format=pandas-columns", ["format=pandas-split"]),
        ("text/csv; format=pandas-split", ["parameters"]),
    ],
)
def test_unsupported_content_type_is_415(servers, content_type, words):
    body = {"dataframe_split": {"columns": FEATURES, "data": [ROW]}}
    assert_error(servers["classifier"].invoke(body, content_type), 415, *words)


def test_missing_content_type_is_415(servers):
    response = httpx.post(f"{servers['classifier'].url}/invocations", content=b"{}")
    assert_error(response, 415, "Content-Type")


def test_unknown_route_is_404_and_wrong_method_405(servers):
    url = servers["classifier"].url
    assert_error(httpx.get(f"{url}/predict"), 404, "/invocations")
    assert_error(httpx.get(f"{url}/invocations"), 405, "GET")


def test_model_exception_is_500_and_the_next_request_is_served(servers):
    fragile = servers["fragile"]
    bad = fragile.invoke({"dataframe_split": {"columns": ["x"], "data": [[-1.0]]}})
    assert_error(bad, 500, "ValueError", "x must not be negative")
    good = fragile.invoke({"dataframe_split": {"columns": ["x"], "data": [[2.0]]}})
    assert good.status_code == 200
    assert good.json() == {"predictions": [4.0]}


def test_predictions_json_cannot_hold_are_500_and_the_next_request_is_served(servers):
    fragile = servers["fragile"]
    odd = fragile.invoke({"dataframe_split": {"columns": ["x"], "data": [[13.0]]}})
    assert_error(odd, 500, "Could not answer with the predictions")
    good = fragile.invoke({"dataframe_split": {"columns": ["x"], "data": [[1.0]]}})
    assert good.json() == {"predictions": [2.0]}


def test_bad_requests_leave_the_server_serving(servers):
    classifier = servers["classifier"]
    for body in (b"{", b"[]", b'{"inputs": "x"}', b"\x00\x01"):
        classifier.invoke(body)
    good = classifier.invoke({"dataframe_split": {"columns": FEATURES, "data": [ROW]}})
    assert good.status_code == 200
    assert classifier.alive()


@pytest.fixture(scope="module")
def small_limit_server(model_paths, log_dir):
    server = Server(model_paths["classifier"], "--max-body-mb", "0.01", log_dir=log_dir)
    server.start().wait_ready()
    yield server
    server.stop()


def test_body_over_the_limit_is_413(small_limit_server):
    rows = [ROW] * 1000  # about 20 kB against a 10 kB limit
    body = json.dumps({"dataframe_split": {"columns": FEATURES, "data": rows}})
    assert_error(small_limit_server.invoke(body), 413, "limit", "--max-body-mb")
    # Streamed without a Content-Length, the limit holds as the body arrives.
    chunks = (body[i : i + 1000].encode() for i in range(0, len(body), 1000))
    streamed = httpx.post(
        f"{small_limit_server.url}/invocations",
        content=chunks,
        headers={"Content-Type": "application/json"},
    )
    assert_error(streamed, 413, "limit")
    under = small_limit_server.invoke({"dataframe_split": {"columns": FEATURES, "data": [ROW]}})
    assert under.status_code == 200


def test_default_limit_is_16_mb(servers):
    body = b'{"inputs": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    assert_error(servers["classifier"].invoke(body), 413, str(16 * 1024 * 1024))


def test_a_request_past_its_deadline_gets_504_and_the_server_stays_responsive(servers):
    sleeper = servers["sleeper"]  # started with --timeout 1
    quick = {"dataframe_split": {"columns": ["seconds"], "data": [[0.05]]}}
    for _ in range(3):  # slow calls teach the server to keep the model off its event loop
        assert sleeper.invoke(quick).status_code == 200
    with httpx.Client(base_url=sleeper.url, timeout=30) as client:
        stuck = client.build_request(
            "POST",
            "/invocations",
            json={"dataframe_split": {"columns": ["seconds"], "data": [[3]]}},
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.send, stuck)
            time.sleep(0.3)
            started = time.monotonic()
            assert client.get("/ping").status_code == 200
            assert time.monotonic() - started < 1, "/ping waited for the model"
            assert_error(pending.result(), 504, "did not answer within 1 s", "--timeout")
    time.sleep(3)  # the model finishes its long call
    assert sleeper.invoke(quick).json() == {"predictions": [0.05]}
