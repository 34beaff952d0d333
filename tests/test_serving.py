"""Serving from the registry: enable a model and every non-archived version answers, in sync."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from support import ONE_ROW, Platform, cli, eventually, model_servers, registry_server

API = "/api/2.0/preview/mlflow/endpoints"


def register(iris, name: str, c: float) -> str:
    labels = [0, 1, 2] * 50
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression(C=c, max_iter=1000).fit(iris, labels), name="model",
            input_example=iris.head(2), registered_model_name=name,
            pip_requirements=["mlflow", "scikit-learn"],
        )  # fmt: skip
    return str(info.registered_model_version)


def transition(registry: MlflowClient, name: str, version: str, stage: str) -> None:
    with warnings.catch_warnings():  # stages are deprecated in MLflow, yet still in use
        warnings.simplefilter("ignore", FutureWarning)
        registry.transition_model_version_stage(name, version, stage)


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory):
    """One platform for the module: each test registers models of names of its own."""
    with Platform(tmp_path_factory.mktemp("serving") / "home", experiment="serving") as running:
        yield running


@pytest.fixture
def platform(shared_platform):
    """The shared platform with MLflow's client on it; serving off for all once a test ends,
    so the next starts with no model served."""
    mlflow.set_tracking_uri(shared_platform.url)  # a test's own platform may have moved it
    mlflow.set_experiment("serving")
    yield shared_platform
    with httpx.Client(base_url=shared_platform.url, timeout=30) as client:
        for endpoint in client.get(f"{API}/list").json()["endpoints"]:
            name = endpoint["registered_model_name"]
            disabled = client.post(f"{API}/disable", json={"registered_model_name": name})
            assert disabled.status_code == 200, disabled.text


@pytest.fixture
def client(platform):
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        yield client


@pytest.fixture
def own_platform(tmp_path):
    """A platform of the test's own, for a test that kills its registry."""
    with Platform(tmp_path / "home", experiment="serving") as running:
        yield running


@pytest.fixture
def own_client(own_platform):
    with httpx.Client(base_url=own_platform.url, timeout=30) as client:
        yield client


def test_a_failed_version_and_a_dead_model_server_leave_the_rest_serving(
    own_platform, own_client, iris
):
    # Its own platform: the registry it kills is not started again. It comes first in the
    # module, so it runs before the shared platform starts, not beside it.
    platform, client = own_platform, own_client
    name = "resilient"
    register(iris, name, 1.0)
    with mlflow.start_run() as run:
        pass  # a run with no model in it: the version below cannot load
    MlflowClient().create_model_version(name, f"runs:/{run.info.run_id}/missing", run.info.run_id)
    client.post(f"{API}/enable", json={"registered_model_name": name})

    def one_ready_one_failed():
        shown = client.get(f"{API}/list-versions", params={"registered_model_name": name}).json()
        states = {v["endpoint_version_name"]: v for v in shown["endpoint_versions"]}
        assert states.get("1", {}).get("state") == "VERSION_STATE_READY", states
        assert states.get("2", {}).get("state") == "VERSION_STATE_FAILED", states
        return states["2"]["state_message"]

    assert "MLmodel" in eventually(one_ready_one_failed)
    assert client.post(f"/model/{name}/1/invocations", json=ONE_ROW).status_code == 200
    refused = client.post(f"/model/{name}/2/invocations", json=ONE_ROW)
    assert refused.status_code == 503
    events = client.get(f"{API}/events", params={"registered_model_name": name}).json()["events"]
    assert any(e["message"].startswith("Version 2 failed") for e in events)
    logs = client.get(
        f"{API}/logs", params={"registered_model_name": name, "endpoint_version_name": "2"}
    ).json()["logs"]
    assert "Version 2 failed to load" in logs and "Traceback" in logs
    assert "version 1" not in logs.lower()
    logs_of_1 = client.get(
        f"{API}/logs", params={"registered_model_name": name, "endpoint_version_name": "1"}
    ).json()["logs"]
    assert "Loading version 1" in logs_of_1 and "Version 1 is ready" in logs_of_1
    assert "Version 2" not in logs_of_1 and "Traceback" not in logs_of_1

    worker = model_servers(platform, name)
    assert len(worker) == 1
    for pid in worker:
        os.kill(pid, signal.SIGKILL)
    down = client.post(f"/model/{name}/1/invocations", json=ONE_ROW)
    assert down.status_code == 503  # never a hang
    assert down.headers["retry-after"]
    eventually(lambda: _served(client, name, "1"))
    events = client.get(f"{API}/events", params={"registered_model_name": name}).json()["events"]
    assert any("exited with code -9; restarting" in e["message"] for e in events)

    # With the registry gone, its server and workers, the routes the controller has keep serving.
    os.killpg(registry_server(platform), signal.SIGKILL)
    assert httpx.get(f"{platform.url}/health").status_code == 503
    for _ in range(15):  # over several reconcile ticks
        assert client.post(f"/model/{name}/1/invocations", json=ONE_ROW).status_code == 200
        time.sleep(0.2)


def test_enabled_model_serves_versions_stages_and_aliases_in_sync(client, iris):
    registry = MlflowClient()
    register(iris, "prod.ml_team.iris model", 1.0)
    register(iris, "prod.ml_team.iris model", 0.001)
    name = "prod.ml_team.iris model"
    quoted = "prod.ml_team.iris%20model"
    registry.set_registered_model_alias(name, "champion", "1")
    transition(registry, name, "2", "Staging")

    assert client.post(f"{API}/enable", json={"registered_model_name": name}).status_code == 200

    def all_ready():
        shown = client.get(f"{API}/list-versions", params={"registered_model_name": name}).json()
        states = {v["endpoint_version_name"]: v["state"] for v in shown["endpoint_versions"]}
        assert states == {"1": "VERSION_STATE_READY", "2": "VERSION_STATE_READY"}, states

    eventually(all_ready)
    status = client.get(f"{API}/get-status", params={"registered_model_name": name}).json()
    assert status["endpoint_status"]["state"] == "ENDPOINT_STATE_READY"
    for ref in ("1", "2", "champion", "Staging"):
        answer = client.post(f"/model/{quoted}/{ref}/invocations", json=ONE_ROW)
        assert answer.status_code == 200, (ref, answer.text)
        assert set(answer.json()) == {"predictions"}
    assert client.post(f"/model/{quoted}/Production/invocations", json=ONE_ROW).status_code == 404

    # A new version is served within seconds; an archived one goes.
    register(iris, name, 10.0)
    eventually(lambda: _served(client, quoted, "3"), timeout_s=30)
    transition(registry, name, "1", "Archived")
    eventually(lambda: _gone(client, quoted, "1"), timeout_s=30)
    assert client.post(f"/model/{quoted}/2/invocations", json=ONE_ROW).status_code == 200

    events = client.get(f"{API}/events", params={"registered_model_name": name}).json()["events"]
    assert any("Version 3 is ready" in e["message"] for e in events)

    assert client.post(f"{API}/disable", json={"registered_model_name": name}).status_code == 200
    eventually(lambda: _gone(client, quoted, "2"))


def test_the_serving_command_line(platform, iris):
    missing = cli(platform, "enable", "nope")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    register(iris, "cli model", 1.0)
    assert cli(platform, "enable", "cli model").stdout == "Serving enabled for cli model.\n"

    def ready():
        shown = json.loads(cli(platform, "versions", "cli model").stdout)
        assert [v["state"] for v in shown] == ["VERSION_STATE_READY"], shown

    eventually(ready)
    status = json.loads(cli(platform, "status", "cli model").stdout)
    assert status["state"] == "ENDPOINT_STATE_READY"
    assert [e["registered_model_name"] for e in json.loads(cli(platform, "list").stdout)] == [
        "cli model"
    ]
    assert "Version 1 is ready." in cli(platform, "events", "cli model").stdout
    assert "Loading version 1" in cli(platform, "logs", "cli model").stdout
    assert cli(platform, "disable", "cli model").returncode == 0
    away = cli(platform, "--url", "http://127.0.0.1:9", "list")
    assert away.returncode == 1
    assert "MODELHOST_URL" in away.stderr


def _served(client, quoted, ref):
    assert client.post(f"/model/{quoted}/{ref}/invocations", json=ONE_ROW).status_code == 200


def _gone(client, quoted, ref):
    assert client.post(f"/model/{quoted}/{ref}/invocations", json=ONE_ROW).status_code == 404


def test_enabling_a_model_that_does_not_exist_is_404(client):
    response = client.post(f"{API}/enable", json={"registered_model_name": "nope"})
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert client.post(f"{API}/enable", json={}).status_code == 400
    assert client.get(f"{API}/list").json() == {"endpoints": []}
    unknown = client.post("/model/nope/1/invocations", json=ONE_ROW)
    assert unknown.status_code == 404


def test_no_failed_request_while_versions_deploy_and_routes_move(client, iris):
    """Steady load on routes that stay valid while the registry changes under them."""
    name = "steady"
    registry = MlflowClient()
    for c in (1.0, 0.5, 0.1):
        register(iris, name, c)
    registry.set_registered_model_alias(name, "champion", "1")
    transition(registry, name, "1", "Production")
    client.post(f"{API}/enable", json={"registered_model_name": name})
    for ref in ("1", "2", "3", "champion", "Production"):
        eventually(lambda ref=ref: _served(client, name, ref))

    stop = threading.Event()
    outcomes: dict[str, list[int]] = {ref: [] for ref in ("1", "champion", "Production")}

    def load(ref: str) -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            while not stop.is_set():
                response = own.post(f"/model/{name}/{ref}/invocations", json=ONE_ROW)
                outcomes[ref].append(response.status_code)

    threads = [threading.Thread(target=load, args=(ref,)) for ref in outcomes for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        register(iris, name, 2.0)  # a new version deploys: 4
        registry.set_registered_model_alias(name, "champion", "4")  # an alias moves
        transition(registry, name, "2", "Production")  # a stage moves
        transition(registry, name, "3", "Archived")  # an unrelated version goes
        eventually(lambda: _gone(client, name, "3"))
        eventually(lambda: _routed_to(client, name, "champion", "4"))
        eventually(lambda: _routed_to(client, name, "Production", "2"))
        time.sleep(1)  # the moved routes under load for a moment more
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for ref, statuses in outcomes.items():
        assert len(statuses) > 20, f"too little load on {ref}"
        failed = [s for s in statuses if s != 200]
        assert failed == [], f"{len(failed)} of {len(statuses)} requests to {ref} failed: {failed}"


def _routed_to(client, name, ref, version):
    routed = client.post(f"/model/{name}/{ref}/invocations", json=ONE_ROW)
    direct = client.post(f"/model/{name}/{version}/invocations", json=ONE_ROW)
    assert routed.status_code == direct.status_code == 200
    assert routed.headers["x-modelhost-version"] == version
