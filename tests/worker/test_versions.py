"""A platform model server holds many versions, each loaded and unloaded while others serve."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from support import FEATURES, ONE_ROW, model_worker

from modelhost import packing


@pytest.fixture(scope="module")
def versions_server(log_dir):
    """A platform model server, handed its socket as `modelhost up` hands it over."""
    with model_worker(log_dir / "versions.log") as (client, _):
        yield client


def wait_for(client: httpx.Client, version: str, state: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = client.get(f"/versions/{version}").json()
        if shown["state"] == state:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"version {version} never reached {state}: {shown}")


def test_versions_load_serve_fail_and_unload_independently(versions_server, model_paths):
    client = versions_server
    put = client.put("/versions/1", json={"model_uri": str(model_paths["classifier"])})
    assert put.status_code == 202
    assert put.json()["state"] == "LOADING"
    loading = client.post("/versions/1/invocations", json=ONE_ROW)
    assert loading.status_code == 503
    assert loading.headers["retry-after"] == "1"
    wait_for(client, "1", "READY")
    assert client.post("/versions/1/invocations", json=ONE_ROW).json() == {"predictions": [0]}

    client.put("/versions/2", json={"model_uri": str(model_paths["scaled_sum"])})
    client.put("/versions/3", json={"model_uri": "/no/such/model"})
    failed = wait_for(client, "3", "FAILED")
    assert "no/such/model" in failed["message"]
    wait_for(client, "2", "READY")
    two = client.post("/versions/2/invocations", json={**ONE_ROW, "params": {"scale": 2.0}})
    assert two.json() == {"predictions": [pytest.approx(20.4)]}
    assert client.post("/versions/1/invocations", json=ONE_ROW).json() == {"predictions": [0]}
    refused = client.post("/versions/3/invocations", json=ONE_ROW)
    assert refused.status_code == 503
    assert "failed to load" in refused.json()["message"]
    metadata = client.get("/versions/2/metadata").json()
    assert metadata["model_uri"] == str(model_paths["scaled_sum"])

    listed = {v["version"]: v["state"] for v in client.get("/versions").json()["versions"]}
    assert listed == {"1": "READY", "2": "READY", "3": "FAILED"}

    assert client.delete("/versions/1").status_code == 200
    gone = client.post("/versions/1/invocations", json=ONE_ROW)
    assert gone.status_code == 404
    assert client.delete("/versions/1").status_code == 404
    assert client.post("/versions/2/invocations", json=ONE_ROW).status_code == 200


def test_a_version_holds_one_model_and_a_failed_load_can_be_retried(versions_server, model_paths):
    client = versions_server
    client.put("/versions/7", json={"model_uri": str(model_paths["classifier"])})
    again = client.put("/versions/7", json={"model_uri": str(model_paths["classifier"])})
    assert again.status_code == 202  # the same model again: nothing changes
    wait_for(client, "7", "READY")
    other = client.put("/versions/7", json={"model_uri": str(model_paths["frame_output"])})
    assert other.status_code == 409
    assert "DELETE it" in other.json()["message"]
    assert client.post("/versions/7/invocations", json=ONE_ROW).json() == {"predictions": [0]}

    client.put("/versions/8", json={"model_uri": "/not/yet/there"})
    wait_for(client, "8", "FAILED")
    retried = client.put("/versions/8", json={"model_uri": "/not/yet/there"})
    assert retried.json()["state"] == "LOADING"
    wait_for(client, "8", "FAILED")


def test_bad_control_requests_are_400(versions_server):
    for body in (b"", b"{}", b'{"model_uri": 3}', b"[1]"):
        response = versions_server.put("/versions/5", content=body)
        assert response.status_code == 400
        assert "model_uri" in response.json()["message"]
    assert versions_server.get("/invocations").status_code == 404


def test_a_pack_of_requests_is_answered_one_answer_each(versions_server, model_paths):
    """What the gateway sends under a crowd: a bad request in a pack fails only itself."""
    client = versions_server
    client.put("/versions/packed", json={"model_uri": str(model_paths["classifier"])})
    wait_for(client, "packed", "READY")
    csv = (",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n").encode()
    requests = [
        (b"application/json", orjson.dumps(ONE_ROW)),
        (b"application/json", b'{"dataframe_split": '),
        (b"text/csv", csv),
        (b"", orjson.dumps(ONE_ROW)),
        (b"application/json", orjson.dumps({"inputs": {"x": [1], "y": [1, 2]}})),
        (b"application/json", orjson.dumps(ONE_ROW)),
    ]
    pack = packing.pack_requests(requests)
    headers = {"content-type": packing.CONTENT_TYPE.decode()}

    answered = client.post("/versions/packed/packed-invocations", content=pack, headers=headers)
    assert answered.status_code == 200
    answers = packing.unpack_answers(answered.content)
    assert [status for status, _, _ in answers] == [200, 400, 200, 415, 400, 200]
    assert orjson.loads(answers[0][2]) == {"predictions": [0]}
    assert orjson.loads(answers[2][2]) == {"predictions": [0]}
    assert "JSON" in orjson.loads(answers[1][2])["message"]
    assert orjson.loads(answers[4][2])["error_code"] == "BAD_REQUEST"

    missing = client.post("/versions/nine/packed-invocations", content=pack, headers=headers)
    assert [status for status, _, _ in packing.unpack_answers(missing.content)] == [404] * 6
    cut = client.post("/versions/packed/packed-invocations", content=pack[:-3], headers=headers)
    assert cut.status_code == 400
    assert "ends inside" in cut.json()["message"]
    assert client.post("/versions/packed/invocations", json=ONE_ROW).status_code == 200
