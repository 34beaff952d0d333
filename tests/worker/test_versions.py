"""A platform model server holds many versions, each loaded and unloaded while others serve."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from modelhost.control.servers import bind_socket

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ONE_ROW = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]]}}


@pytest.fixture(scope="module")
def versions_server(log_dir):
    """A platform model server, handed its socket as `modelhost up` hands it over."""
    sockets = Path(tempfile.mkdtemp(prefix="modelhost-versions-"))  # short: sockets allow ~100
    path = sockets / "1.sock"
    log = open(log_dir / "versions.log", "wb")  # noqa: SIM115 - closed below
    with bind_socket(path) as listener:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "worker", "--fd", str(listener.fileno())],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(listener.fileno(),),
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while not accepts(path):  # refused until the server listens on what it was handed
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.2)
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://model-server", timeout=60) as client:
        assert client.get("/ping").status_code == 200
        yield client
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()
    shutil.rmtree(sockets)


def accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return False
    return True


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
