"""`modelhost up --engine ray`: model servers placed on a real two-node Ray cluster.

One cluster and one platform for the module; the node-loss test runs last and adds a node back.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from support import (
    FEATURES,
    Load,
    Platform,
    RayCluster,
    log_iris,
    started_by,
    wait_for,
)

API = "/api/2.0/preview/mlflow/endpoints"
TOYS = Path(__file__).parent.parent / "toys"
PINNED_SIX = "1.16.0"  # not the project's own six: its versions run in an environment built for it
BUILD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ray_node_env(tmp_path_factory) -> dict[str, str]:
    """The nodes' modelhost home: where they unpack versions and build environments."""
    return {"MODELHOST_HOME": str(tmp_path_factory.mktemp("nodes"))}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, ray_node_env):
    """Two worker nodes of 4 CPUs: room on one for every replica the tests place."""
    with RayCluster(tmp_path_factory.mktemp("cluster"), cpus=4, env=ray_node_env) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def platform(tmp_path_factory, ray_cluster):
    saved = dict(os.environ)
    os.environ.update(ray_cluster.environ())  # what `up`, a Ray driver, needs to connect
    try:
        home = tmp_path_factory.mktemp("ray") / "home"
        with Platform(
            home, "--engine", "ray", "--ray-address", ray_cluster.address, experiment="ray"
        ) as running:
            yield running
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def client(platform):
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        yield client


def enable(client: httpx.Client, name: str, **settings) -> None:
    answer = client.post(f"{API}/enable", json={"registered_model_name": name, **settings})
    assert answer.status_code == 200, answer.text


def update(client: httpx.Client, name: str, **settings) -> None:
    answer = client.post(f"{API}/update-settings", json={"registered_model_name": name, **settings})
    assert answer.status_code == 200, answer.text


def versions(client: httpx.Client, name: str) -> dict[str, dict]:
    listed = client.get(f"{API}/list-versions", params={"registered_model_name": name}).json()
    return {v["endpoint_version_name"]: v for v in listed["endpoint_versions"]}


def ready(client: httpx.Client, name: str, *numbers: str, timeout_s: float = 120) -> None:
    def all_ready():
        shown = versions(client, name)
        return all(shown.get(n, {}).get("state") == "VERSION_STATE_READY" for n in numbers)

    wait_for(all_ready, timeout_s, f"{name} {numbers} ready")


def events(client: httpx.Client, name: str) -> list[str]:
    shown = client.get(f"{API}/events", params={"registered_model_name": name}).json()
    return [e["message"] for e in shown["events"]]


def replica_processes() -> dict[int, int]:
    """Every model server owned by a Ray actor: its pid -> its actor's pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parents_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if (
            b"worker" in command
            and b"modelhost" in b" ".join(command[:3])
            and (parents_command.startswith(b"ray::ReplicaHost"))
        ):
            found[int(entry.name)] = parent
    return found


def score(client: httpx.Client, name: str, ref: str, body: dict) -> httpx.Response:
    return client.post(f"/model/{name}/{ref}/invocations", json=body)


IRIS_ROW = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]]}}
SIX_ROW = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}


@pytest.fixture(scope="module")
def iris_model(client, iris):
    """`iris` versions 1 and 2 (the current environment), alias champion -> 1, v2 Production."""
    log_iris(iris, "iris")
    log_iris(iris, "iris")
    registry = MlflowClient()
    registry.set_registered_model_alias("iris", "champion", "1")
    with warnings.catch_warnings():  # stages are deprecated in MLflow, yet still in use
        warnings.simplefilter("ignore", FutureWarning)
        registry.transition_model_version_stage("iris", "2", "Production")
    enable(client, "iris")
    ready(client, "iris", "1", "2")
    return "iris"


@pytest.fixture(scope="module")
def pinned_model(client):
    """`pinned` version 1, needing six 1.16.0: an environment built with uv on its node."""
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=str(TOYS / "six_version.py"),
            code_paths=[str(TOYS / "version_helper.py")],
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"six=={PINNED_SIX}"],
            signature=infer_signature(pd.DataFrame({"x": [1.0]}), np.array([PINNED_SIX])),
            registered_model_name="pinned",
        )  # fmt: skip
    enable(client, "pinned")
    ready(client, "pinned", "1", timeout_s=BUILD_TIMEOUT_S)
    return "pinned"


def test_two_models_in_their_own_environments_answer_by_version_stage_and_alias(
    client, iris_model, pinned_model
):
    for ref, version in (("1", "1"), ("2", "2"), ("champion", "1"), ("Production", "2")):
        answer = score(client, "iris", ref, IRIS_ROW)
        assert answer.status_code == 200, (answer.text, events(client, "iris"))
        assert answer.headers["x-modelhost-version"] == version
    six = score(client, "pinned", "1", SIX_ROW)
    assert six.status_code == 200, six.text
    assert six.json() == {"predictions": [PINNED_SIX]}  # its own environment, built on its node
    # Each runs as a process owned by a Ray actor, not as a child of `modelhost up`.
    assert len(replica_processes()) >= 2
    assert any("(replica 1) is up." in e for e in events(client, "pinned"))


def test_a_replica_answers_only_the_gateway(client, iris_model):
    """Model servers on a cluster listen on TCP; without their secret they answer 401."""
    pid = next(iter(replica_processes()))
    ports = _listening_ports(pid)
    assert ports, "a model server on a node listens on a TCP port"
    for port in ports:
        refused = httpx.post(
            f"http://127.0.0.1:{port}/versions/1/invocations", json=IRIS_ROW, timeout=10
        )
        assert refused.status_code == 401, refused.text
        wrong = httpx.get(
            f"http://127.0.0.1:{port}/health", headers={"Authorization": "Bearer nope"}, timeout=10
        )
        assert wrong.status_code == 401


def _listening_ports(pid: int) -> list[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            ports.append(int(fields[1].split(":")[1], 16))
    return ports


def test_an_alias_moved_under_load_fails_no_request(platform, client, iris_model):
    registry = MlflowClient()
    with Load({"champion": f"{platform.url}/model/iris/champion/invocations"},
              body=IRIS_ROW) as load:  # fmt: skip
        time.sleep(1)
        load.phase = "moved"
        registry.set_registered_model_alias("iris", "champion", "2")

        def moved():
            answer = score(client, "iris", "champion", IRIS_ROW)
            return answer.headers.get("x-modelhost-version") == "2"

        wait_for(moved, 30, "the alias to move")
        time.sleep(1)
    outcomes = load.of("champion")
    assert outcomes and all(o.status == 200 for o in outcomes), load.summary()
    registry.set_registered_model_alias("iris", "champion", "1")


def test_a_model_asking_more_than_any_node_has_fails_saying_so(client, iris):
    log_iris(iris, "huge")
    enable(client, "huge", cpus=64)

    def failed():
        shown = versions(client, "huge").get("1", {})
        return shown.get("state") == "VERSION_STATE_FAILED" and shown

    shown = wait_for(failed, 60, "huge to fail")
    assert "more than any node of the Ray cluster has" in shown["state_message"]
    assert "cpus" in shown["state_message"]
    client.post(f"{API}/disable", json={"registered_model_name": "huge"})


def test_a_model_scales_from_one_replica_to_two_and_back_with_no_failed_request(
    platform, client, iris_model
):
    url = f"{platform.url}/model/iris/1/invocations"
    with Load({"iris": url}, body=IRIS_ROW) as load:
        before = len(replica_processes())
        update(client, "iris", min_replicas=2, max_replicas=2)
        wait_for(lambda: len(replica_processes()) == before + 1, 120, "a second replica")
        wait_for(lambda: "2 of 2 replicas" in _version_message(client, "iris", "1"), 60, "2 ready")
        update(client, "iris", min_replicas=1, max_replicas=1)
        wait_for(lambda: len(replica_processes()) == before, 60, "one replica again")
        time.sleep(1)
    outcomes = load.of("iris")
    assert outcomes and all(o.status == 200 for o in outcomes), load.summary()


def _version_message(client: httpx.Client, name: str, version: str) -> str:
    return versions(client, name).get(version, {}).get("state_message", "")


def test_a_loaded_model_scales_up_and_back_down_when_quiet(platform, client):
    """Between min and max replicas, requests in flight per replica decide, each an event."""
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=str(TOYS / "sleeper.py"), registered_model_name="slow",
            pip_requirements=["mlflow", "pandas"],
            signature=infer_signature(pd.DataFrame({"seconds": [0.1]}), np.zeros(1)),
        )  # fmt: skip
    enable(client, "slow", min_replicas=1, max_replicas=2, max_batch_size=1)
    ready(client, "slow", "1")
    body = {"dataframe_split": {"columns": ["seconds"], "data": [[0.3]]}}
    url = f"{platform.url}/model/slow/1/invocations"
    with Load({"slow": url}, clients=8, pause_s=0, body=body) as load:
        wait_for(lambda: any("Scaling up to 2 replicas" in e for e in events(client, "slow")),
                 90, "scaling up")  # fmt: skip
        wait_for(lambda: "2 of 2 replicas" in _version_message(client, "slow", "1"), 120, "2 up")
    assert all(o.status == 200 for o in load.of("slow")), load.summary()
    wait_for(lambda: any("Scaling down to 1 replica" in e for e in events(client, "slow")),
             120, "scaling down")  # fmt: skip
    client.post(f"{API}/disable", json={"registered_model_name": "slow"})


def test_a_lost_node_costs_only_the_requests_it_had_in_flight(
    platform, client, iris_model, ray_cluster
):
    """Two replicas, spread over the two nodes; the worker node dies under load."""
    update(client, "iris", min_replicas=2, max_replicas=2)
    wait_for(lambda: "2 of 2 replicas" in _version_message(client, "iris", "1"), 120, "2 up")
    clients = 4
    url = f"{platform.url}/model/iris/1/invocations"
    with Load({"iris": url}, clients=clients, body=IRIS_ROW) as load:
        time.sleep(2)
        load.phase = "node lost"
        ray_cluster.remove_node(ray_cluster.nodes[-1])
        # Its replica is placed again, on the node left (it has room for both).
        wait_for(lambda: any("was lost" in e for e in events(client, "iris")), 60, "the loss")
        wait_for(lambda: "2 of 2 replicas" in _version_message(client, "iris", "1"), 120, "2 up")
        load.phase = "placed again"
        time.sleep(2)
    failed = [o for o in load.of("iris") if o.status != 200]
    assert len(failed) <= clients, load.summary()  # at most those in flight on the lost node
    assert all(o.retry_after for o in failed), load.summary()  # 503: send again shortly
    assert all(o.status == 200 for o in load.of("iris", "placed again")), load.summary()
    ray_cluster.add_node()


def test_nothing_is_left_on_the_nodes_once_up_stops(platform):
    platform.stop()
    wait_for(lambda: replica_processes() == {}, 30, "no model server on the nodes")


def test_a_killed_up_leaves_no_model_server_on_the_nodes(tmp_path, platform, ray_cluster):
    """Ray ends a driver's actors with it, and a replica's server with its actor."""
    with Platform(tmp_path / "home", "--engine", "ray", "--ray-address", ray_cluster.address,
                  "--demo") as demo:  # fmt: skip
        with httpx.Client(base_url=demo.url, timeout=60) as client:
            ready(client, "iris-demo", "1")
        servers = replica_processes()
        assert servers, "the demo's model server runs on a node"
        os.killpg(demo.process.pid, signal.SIGKILL)
        demo.process.wait(timeout=30)
        wait_for(lambda: not set(servers) & set(replica_processes()), 60, "its servers to end")
        # The registry it ran ends too (it watches `up`): nothing is left on this machine.
        wait_for(lambda: not started_by(demo.marker), 30, "the registry to end")
