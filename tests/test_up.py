"""`modelhost up`: MLflow's own client logs, registers and loads models through the gateway."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from support import START_TIMEOUT_S, Platform, free_port, started_by

from modelhost.demo import ONE_FLOWER


@pytest.fixture
def tracking_uri():
    yield
    mlflow.set_tracking_uri(None)


def test_mlflow_client_and_the_demo_register_through_the_gateway_and_stay_across_restarts(
    tmp_path, iris, tracking_uri
):
    """On a new home with --demo, then again on the same home: what MLflow's client registered
    is still there, and the demo model is registered once and served each time.

    One home started twice covers both restarts a user makes (each start costs half a minute).
    """
    labels = [0, 1, 2] * 50
    home = tmp_path / "home"
    with Platform(home, "--demo") as platform:
        mlflow.set_tracking_uri(platform.url)
        _demo_is_registered_once_and_served(platform, iris)
        mlflow.set_experiment("iris")
        model = LogisticRegression(max_iter=1000).fit(iris, labels)
        # An artifact over the scoring body limit (16 MB) passes: uploads are not scoring.
        large = tmp_path / "large.bin"
        large.write_bytes(os.urandom(17 * 1024 * 1024))
        stored_before = set((home / "registry" / "artifacts").rglob("MLmodel"))  # the demo's
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(
                model, name="model", input_example=iris.head(2), registered_model_name="iris",
                pip_requirements=["mlflow", "scikit-learn"],
            )  # fmt: skip
            mlflow.log_artifact(str(large))
        fetched = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="large.bin", dst_path=str(tmp_path / "fetched")
        )
        assert Path(fetched).read_bytes() == large.read_bytes()
        client = MlflowClient()
        client.set_registered_model_alias("iris", "champion", "1")
        assert client.get_model_version_by_alias("iris", "champion").version == "1"
        loaded = mlflow.pyfunc.load_model("models:/iris@champion")
        assert loaded.predict(iris.head(5)).tolist() == model.predict(iris.head(5)).tolist()
        # The artifacts live under the home, uploaded through the gateway.
        stored = set((home / "registry" / "artifacts").rglob("MLmodel")) - stored_before
        assert stored, "no model artifacts were stored under the home"
        assert str(info.registered_model_version) == "1"

        missing = httpx.get(f"{platform.url}/no/such/route")
        assert missing.status_code == 404
        assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"

        spec = httpx.get(f"{platform.url}/openapi.json").json()
        assert "/model/{name}/{ref}/invocations" in spec["paths"]
        assert "/api/2.0/preview/mlflow/endpoints/list-versions" in spec["paths"]
        docs = httpx.get(f"{platform.url}/docs")
        assert docs.headers["content-type"].startswith("text/html")
        assert "/api/2.0/preview/mlflow/endpoints/enable" in docs.text

    # A restart on the same home finds what was registered; the demo model is not added again.
    with Platform(home, "--demo") as platform:
        mlflow.set_tracking_uri(platform.url)
        versions = MlflowClient().search_model_versions("name='iris'")
        assert [v.version for v in versions] == ["1"]
        _demo_is_registered_once_and_served(platform, iris)
    printed = platform.log_path.read_text()
    assert f"curl -s {platform.url}/model/iris-demo/1/invocations" in printed


def _demo_is_registered_once_and_served(platform: Platform, iris) -> None:
    versions = MlflowClient().search_model_versions("name='iris-demo'")
    assert [v.version for v in versions] == ["1"]
    model = mlflow.pyfunc.load_model("models:/iris-demo/1")
    assert model.predict(iris.head(1)).tolist() == [0]
    # --demo also serves it, at the address it prints.
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(
            f"{platform.url}/model/iris-demo/1/invocations",
            content=ONE_FLOWER, headers={"Content-Type": "application/json"},
        )  # fmt: skip
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert answer.json() == {"predictions": [0]}


def test_a_database_registry_uri_is_served_through_the_gateway(tmp_path, tracking_uri):
    database = f"sqlite:///{tmp_path / 'existing.db'}"
    mlflow.set_tracking_uri(database)
    MlflowClient().create_registered_model("already-there")
    with Platform(tmp_path / "home", "--registry-uri", database) as platform:
        mlflow.set_tracking_uri(platform.url)
        names = [m.name for m in MlflowClient().search_registered_models()]
        assert names == ["already-there"]


def test_health_says_when_the_registry_is_unreachable(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelhost", "up", "--home", str(tmp_path), "--port", str(port),
         "--registry-uri", dead],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert health.status_code == 503
        assert health.json()["status"] == "REGISTRY_UNREACHABLE"
        proxied = httpx.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search")
        assert proxied.status_code == 503
        assert "did not answer" in proxied.json()["message"]
    finally:
        process.send_signal(signal.SIGINT)  # as a user stops it: it cleans up after itself
        try:
            assert process.wait(timeout=30) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "case", ["short admin token", "home is a file", "port taken", "auth and insecure"]
)
def test_bad_settings_stop_up_before_anything_starts(tmp_path, case):
    """Each is refused with a message naming what to change; no registry, no server ran."""
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "MODELHOST_ADMIN_TOKEN": "x" * 40}
    args = ["--home", str(home), "--port", str(port)]
    expected = {
        "short admin token": "MODELHOST_ADMIN_TOKEN is shorter than 32",
        "home is a file": "--home",
        "port taken": "--port",
        "auth and insecure": "contradict",
    }[case]
    taken = None
    if case == "short admin token":
        env["MODELHOST_ADMIN_TOKEN"] = "short"
        args.append("--auth")
    elif case == "home is a file":
        home.write_text("not a folder")
    elif case == "port taken":
        taken = socket.create_server(("127.0.0.1", port))
    else:
        args += ["--auth", "--insecure"]
    marker = f"TEST_PLATFORM_MARKER=setup-{case.replace(' ', '-')}-{port}"
    env[marker.partition("=")[0]] = marker.partition("=")[2]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "modelhost", "up", *args],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
    finally:
        if taken is not None:
            taken.close()
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr, done.stderr
    assert "registry" not in (done.stdout + done.stderr).lower(), done.stderr
    assert "x" * 40 not in done.stderr  # the token never echoed
    assert not (home / "registry").exists() and not (home / "state.db").exists()
    assert started_by(marker) == []
