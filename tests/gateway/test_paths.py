"""Every request path has one reading: the one auth judges is the one that is forwarded."""

from __future__ import annotations

import asyncio

import pytest

from modelhost.errors import InvalidInput
from modelhost.gateway.paths import (
    Normalized,
    canonical,
    encoded,
    registry_route,
    scoring_target,
    serving_action,
)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/api/2.0/mlflow/x/../registered-models/get", "/api/2.0/mlflow/registered-models/get"),
        (b"/api/2.0/mlflow/./registered-models/get", "/api/2.0/mlflow/registered-models/get"),
        (b"/api/2.0/mlflow-artifacts/../mlflow/runs/get", "/api/2.0/mlflow/runs/get"),
        (b"/api/3.0/mlflow/../../2.0/mlflow/webhooks", "/api/2.0/mlflow/webhooks"),
        (b"/ajax-api/x/../2.0/mlflow/webhooks", "/ajax-api/2.0/mlflow/webhooks"),
        (b"/api/2.0/mlflow/%2e%2e/mlflow/webhooks", "/api/2.0/mlflow/webhooks"),
        (b"/api/2.0/mlflow/x/%2E%2e/webhooks", "/api/2.0/mlflow/webhooks"),
        (b"//api//2.0///mlflow/webhooks", "/api/2.0/mlflow/webhooks"),
        (b"/model/iris%20model/1/invocations", "/model/iris model/1/invocations"),
        (b"/api/2.0/mlflow-artifacts/a%252e%252e/b", "/api/2.0/mlflow-artifacts/a%2e%2e/b"),
        (b"/docs/", "/docs/"),
        (b"/", "/"),
    ],
)  # fmt: skip
def test_paths_are_decoded_once_and_dot_segments_resolved(raw, path):
    assert canonical(raw) == path
    assert canonical(encoded(path)) == path  # what is forwarded reads the same behind the gateway


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"/model/a%2Fb/1/invocations", "encoded slash"),
        (b"/api/2.0/mlflow%2fregistered-models/get", "encoded slash"),
        (b"/api/2.0/mlflow/x%5c..%5cwebhooks", "encoded slash"),
        (b"/api/2.0/mlflow/x\\..\\webhooks", "backslash"),
        (b"/../etc/passwd", "above the root"),
        (b"/api/%2e%2e/%2e%2e/x", "above the root"),
        (b"/api/%zz", "two hex digits"),
        (b"/api/%ff", "UTF-8"),
        (b"/api/a%00b", "control"),
        (b"api/2.0/mlflow/webhooks", "starts with '/'"),
    ],
)
def test_paths_without_one_reading_are_refused(raw, why):
    with pytest.raises(InvalidInput, match=why):
        canonical(raw)


def test_route_families_split_alike_for_auth_and_routing():
    assert scoring_target("/model/iris/champion/invocations") == ("iris", "champion")
    assert scoring_target("/model/a/b/1/invocations") is None  # names hold no '/'
    assert scoring_target("/model/iris/1/invocations/") is None
    assert serving_action("/api/2.0/mlflow/endpoints/enable") == "enable"
    assert serving_action("/api/2.0/preview/mlflow/endpoints/x/enable") == "x/enable"  # unknown
    assert registry_route("/api/2.0/mlflow/endpoints/enable") == (
        "/api/2.0/mlflow/",
        "endpoints/enable",
    )
    assert registry_route("/api/2.0/mlflowx/runs/get") is None
    assert registry_route("/ajax-api/3.0/mlflow/traces") == ("/ajax-api/3.0/mlflow/", "traces")


@pytest.mark.parametrize(
    ("raw", "seen"),
    [
        (b"/model/iris/1/invocations", "/model/iris/1/invocations"),  # passes untouched
        (b"/api/2.0/mlflow/x/../webhooks", "/api/2.0/mlflow/webhooks"),
        (b"/api/2.0/mlflow/./x/.", "/api/2.0/mlflow/x"),
        (b"/a/.hidden/b", "/a/.hidden/b"),
        (b"/a%2Fb", 400),
        (b"*", 400),
    ],
)
def test_the_wrapper_hands_on_one_path_or_answers_400(raw, seen):
    seen_paths, sent = [], []

    async def app(scope, receive, send):
        seen_paths.append((scope["path"], canonical(scope["raw_path"])))

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": raw.decode(), "raw_path": raw}
    asyncio.run(Normalized(app)(scope, None, send))
    if seen == 400:
        assert sent[0]["status"] == 400 and not seen_paths
    else:
        assert seen_paths == [(seen, seen)]  # the path judged is the path forwarded
