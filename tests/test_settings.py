"""Cluster settings: set through the API and the command line, applied with no failed request."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.models import infer_signature
from prometheus_client.parser import text_string_to_metric_families
from support import FEATURES, Load, Platform, cli, eventually, log_iris, model_servers

from modelhost.control.store import StateStore

API = "/api/2.0/preview/mlflow/endpoints"
NAME = "fraud scorer"
QUOTED = "fraud%20scorer"
UP_TIMEOUT_S = 30  # `up --timeout`: the default of every model that sets none
TOYS = Path(__file__).parent / "toys"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, iris):
    home = tmp_path_factory.mktemp("settings") / "home"
    with Platform(home, "--timeout", str(UP_TIMEOUT_S), experiment="settings") as running:
        log_iris(iris, NAME)
        yield running


@pytest.fixture(scope="module")
def client(platform):
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def served(client):
    """NAME served with the platform's defaults, its version 1 ready."""
    assert client.post(f"{API}/enable", json={"registered_model_name": NAME}).status_code == 200

    def ready():
        shown = client.get(f"{API}/list-versions", params={"registered_model_name": NAME}).json()
        states = [v["state"] for v in shown["endpoint_versions"]]
        assert states == ["VERSION_STATE_READY"], shown

    eventually(ready, timeout_s=180)
    return NAME


def status(client: httpx.Client) -> dict:
    answer = client.get(f"{API}/get-status", params={"registered_model_name": NAME})
    assert answer.status_code == 200, answer.text
    return answer.json()["endpoint_status"]


def events(client: httpx.Client) -> list[str]:
    """Oldest first."""
    answer = client.get(f"{API}/events", params={"registered_model_name": NAME})
    return [e["message"] for e in reversed(answer.json()["events"])]


def update(client: httpx.Client, **settings) -> httpx.Response:
    return client.post(f"{API}/update-settings", json={"registered_model_name": NAME, **settings})


def worker_processes(pid: int) -> int:
    """How many worker processes model server `pid` runs: itself, or the children it spawned."""
    children = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (proc / "cmdline").read_bytes():
                children += 1
        except (OSError, ValueError):  # gone meanwhile
            pass
    return children or 1


def batch_rows(client: httpx.Client) -> tuple[float, float]:
    """(predict calls, those of at most 4 rows) of NAME's version 1, from the gateway's /metrics."""
    text = client.get("/metrics").text
    calls = small = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "modelhost_batch_rows":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model_name") != NAME or labels.get("model_version") != "1":
                continue
            if sample.name.endswith("_count"):
                calls = sample.value
            elif sample.name.endswith("_bucket") and labels["le"] == "4.0":
                small = sample.value
    return calls, small


def test_a_served_model_shows_the_platforms_defaults(client, served):
    assert status(client)["settings"] == {
        "env_manager": "auto",
        "workers": 1,
        "max_batch_size": 2048,
        "max_batch_delay_ms": 2,
        "timeout_s": UP_TIMEOUT_S,
        "cpus": 1,
        "memory_mb": 0,
        "min_replicas": 1,
        "max_replicas": 1,
        "scale_to_zero_after": None,
        "tags": [],
    }
    assert status(client)["engine"] == "local"  # what the page offers settings for
    listed = client.get(f"{API}/list").json()["endpoints"]
    assert [e["settings"] for e in listed if e["registered_model_name"] == NAME] == [
        status(client)["settings"]
    ]


def test_bad_settings_get_400_saying_what_they_may_be(client, served):
    for settings, said in [
        ({"workers": 0}, "workers must be a whole number of worker processes from 1 to 16"),
        ({"workers": "two"}, "not 'two'"),
        ({"max_batch_size": -5}, "max_batch_size must be a whole number of rows per predict"),
        ({"max_batch_delay_ms": "soon"}, "max_batch_delay_ms must be a number of milliseconds"),
        ({"timeout_s": 0}, "timeout_s must be a number of seconds above 0"),
        ({"env_manager": "conda"}, "env_manager must be one of auto, local, uv"),
        ({"tags": [{"key": "team"}, {"key": "team"}]}, "Tag 'team' is given twice"),
        ({"worker": 2}, "Unknown setting 'worker'"),
        ({}, "Send at least one setting to change"),
        ({"cpus": 0}, "cpus must be a number of logical CPUs from 0.1 to 256"),
        ({"memory_mb": -1}, "memory_mb must be a whole number of MB each replica reserves"),
        ({"min_replicas": 65}, "min_replicas must be a whole number of replicas of the model's"),
        ({"max_replicas": 0}, "max_replicas must be a whole number of replicas"),
    ]:
        refused = update(client, **settings)
        assert refused.status_code == 400, (settings, refused.text)
        assert refused.json()["error_code"] == "BAD_REQUEST"
        assert said in refused.json()["message"], (settings, refused.json())
    stranger = client.post(f"{API}/update-settings", json={"registered_model_name": "nope"})
    assert stranger.status_code == 404
    refused = client.post(f"{API}/enable", json={"registered_model_name": NAME, "workers": 99})
    assert refused.status_code == 400
    assert status(client)["settings"]["workers"] == 1  # nothing bad was kept


def test_the_published_contract_gives_the_cluster_settings_ranges(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"][f"{API}/update-settings"]["post"]["requestBody"]
    fields = body["content"]["application/json"]["schema"]["properties"]
    assert fields["cpus"] == {"type": "number", "minimum": 0.1, "maximum": 256}
    assert fields["memory_mb"] == {"type": "integer", "minimum": 0, "maximum": 4_194_304}
    for key in ("min_replicas", "max_replicas"):
        assert fields[key] == {"type": "integer", "minimum": 1, "maximum": 64}
    assert "--engine ray" in spec["paths"][f"{API}/update-settings"]["post"]["description"]


def test_the_local_engine_refuses_cluster_settings_saying_how_to_get_them(client, served):
    cluster = {"cpus": 2, "memory_mb": 512, "min_replicas": 2, "max_replicas": 3}
    for settings, named in [
        (cluster, "cpus, memory_mb, min_replicas, max_replicas"),
        ({"workers": 2, "max_replicas": 2}, "max_replicas"),
        ({"memory_mb": 0}, "memory_mb"),
    ]:
        refused = update(client, **settings)
        assert refused.status_code == 400, refused.text
        assert refused.json() == {
            "error_code": "BAD_REQUEST",
            "message": f"This request sets {named}, which place replicas on a Ray cluster; this "
            "modelhost runs its model servers locally. Start modelhost with `--engine ray "
            "--ray-address ADDRESS` to use them; locally, `workers` is what adds processes.",
        }
    refused = client.post(f"{API}/enable", json={"registered_model_name": NAME, **cluster})
    assert refused.status_code == 400 and "--engine ray" in refused.json()["message"]
    shown = status(client)["settings"]
    assert [shown[k] for k in cluster] == [1, 0, 1, 1] and shown["workers"] == 1
    assert not any("cpus" in m or "replicas" in m for m in events(client))


def test_new_settings_apply_with_no_failed_request(platform, client, served):
    [old_server] = model_servers(platform, NAME)
    load = Load({"v1": f"{platform.url}/model/{QUOTED}/1/invocations"}, clients=2)
    with load:
        eventually(lambda: _answered(load), timeout_s=60)
        load.phase = "settings changing"
        changed = update(client, workers=2, max_batch_size=4, max_batch_delay_ms=5)
        assert changed.status_code == 200, changed.text

        def old_server_stopped():
            said = events(client)
            assert any(m.startswith("The old model server stopped") for m in said), said

        eventually(old_server_stopped, timeout_s=240)
        load.phase = "after"
        eventually(lambda: _answered(load, "after"), timeout_s=60)
    print(f"\n{load.summary()}")
    failed = [o for o in load.outcomes if o.status != 200]
    assert failed == [], failed[:5]
    assert len(load.of("v1", "settings changing")) > 0

    settings = status(client)["settings"]
    assert (settings["workers"], settings["max_batch_size"], settings["max_batch_delay_ms"]) == (
        2, 4, 5,
    )  # fmt: skip
    # Each step is an event, in order.
    said = events(client)
    steps = [
        "Settings changed: workers 1 → 2; max_batch_size 2048 → 4; max_batch_delay_ms 2 → 5.",
        "Starting a model server with the new settings (workers 2, max_batch_size 4, "
        f"max_batch_delay_ms 5, timeout_s {UP_TIMEOUT_S}).",
        "Routes moved to the model server with the new settings.",
        "The old model server stopped: its versions are ready on the new one.",
    ]
    assert all(step in said for step in steps), said
    assert [said.index(step) for step in steps] == sorted(said.index(step) for step in steps)

    # The new server really runs with them: two worker processes, batches of at most 4 rows.
    [new_server] = model_servers(platform, NAME)
    assert new_server != old_server
    assert worker_processes(new_server) == 2
    three_rows = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]] * 3}}
    url = f"{platform.url}/model/{QUOTED}/1/invocations"
    with ThreadPoolExecutor(8) as pool:  # together they would make batches of 6 rows and more
        answers = list(pool.map(lambda _: httpx.post(url, json=three_rows, timeout=60), range(48)))
    assert {a.status_code for a in answers} == {200}
    calls, small = batch_rows(client)
    assert calls >= 16 and small == calls, (calls, small)


def test_new_tags_restart_nothing(platform, client, served):
    before = model_servers(platform, NAME)
    tags = [{"key": "team", "value": "fraud"}, {"key": "tier", "value": "gold"}]
    assert update(client, tags=tags).status_code == 200
    assert status(client)["settings"]["tags"] == tags
    assert "Settings changed: tags {} → {team=fraud, tier=gold}." in events(client)
    time.sleep(3)  # several controller passes, any of which would have started a server
    assert model_servers(platform, NAME) == before
    assert not any("Starting a model server" in m for m in events(client)[-3:])


def test_the_command_line_sets_and_shows_settings(platform, client, served):
    changed = cli(
        platform, "settings", NAME, "--timeout", "45", "--tag", "team=risk", "--tag", "owner=ana",
        "--remove-tag", "tier",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines() == [
        f"timeout_s of {NAME} is 45.",
        f"tags of {NAME}: team=risk, owner=ana.",
    ]
    shown = cli(platform, "settings", NAME)
    assert json.loads(shown.stdout) == status(client)["settings"]
    assert json.loads(shown.stdout)["timeout_s"] == 45
    assert json.loads(shown.stdout)["tags"] == [
        {"key": "team", "value": "risk"},
        {"key": "owner", "value": "ana"},
    ]
    refused = cli(platform, "settings", NAME, "--workers", "0")
    assert refused.returncode != 0
    assert "workers must be a whole number of worker processes from 1 to 16" in refused.stderr
    missing = cli(platform, "settings", NAME, "--remove-tag", "nope")
    assert missing.returncode != 0 and "has no tag 'nope'" in missing.stderr


def test_the_command_line_sets_cluster_settings_the_engine_takes(platform, client, served):
    placed = cli(
        platform, "settings", NAME, "--cpus", "2", "--memory-mb", "512", "--min-replicas", "1",
        "--max-replicas", "3",
    )  # fmt: skip
    assert placed.returncode != 0
    assert "This request sets cpus, memory_mb, max_replicas, which place replicas" in (
        placed.stderr
    )
    # One replica is what the local engine runs: set, kept and shown.
    one = cli(platform, "settings", NAME, "--min-replicas", "1", "--max-replicas", "1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == [
        f"min_replicas of {NAME} is 1.",
        f"max_replicas of {NAME} is 1.",
    ]
    store = StateStore.in_home(platform.home)
    try:
        kept = store.served()[NAME]
    finally:
        store.engine.dispose()
    assert (kept["min_replicas"], kept["max_replicas"]) == (1, 1)
    shown = json.loads(cli(platform, "settings", NAME).stdout)
    assert [shown[k] for k in ("cpus", "memory_mb", "min_replicas", "max_replicas")] == [1, 0, 1, 1]


def test_a_models_timeout_bounds_its_requests(platform, client):
    """A model's own timeout_s reaches its server and the gateway; the platform's is 30 s."""
    name = "slow model"
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=str(TOYS / "sleeper.py"), registered_model_name=name,
            pip_requirements=["mlflow", "pandas"],
            signature=infer_signature(pd.DataFrame({"seconds": [0.1]}), np.zeros(1)),
        )  # fmt: skip
    enabled = client.post(f"{API}/enable", json={"registered_model_name": name, "timeout_s": 1})
    assert enabled.status_code == 200, enabled.text
    url = "/model/slow%20model/1/invocations"

    def seconds(n: float) -> dict:
        return {"dataframe_split": {"columns": ["seconds"], "data": [[n]]}}

    def answers():
        # 0.1 s calls: the model server then predicts on a thread, off its event loop.
        quick = client.post(url, json=seconds(0.1))
        assert quick.status_code == 200, quick.text

    eventually(answers, timeout_s=180)
    slow = client.post(url, json=seconds(2.5))  # well within the platform's 30 s
    assert slow.status_code == 504, slow.text
    assert slow.json()["error_code"] == "DEADLINE_EXCEEDED"
    eventually(answers, timeout_s=60)  # once the slow call is over, served as usual
    assert client.post(f"{API}/disable", json={"registered_model_name": name}).status_code == 200


def test_a_state_database_made_before_cluster_settings_opens(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as db:  # the tables as the release before cluster settings made them
        db.execute(
            sa.text(
                "CREATE TABLE serving (registered_model_name VARCHAR PRIMARY KEY, "
                "enabled_at FLOAT NOT NULL, env_manager VARCHAR)"
            )
        )
        db.execute(sa.text("INSERT INTO serving VALUES ('older', 1.0, 'uv')"))
    engine.dispose()
    store = StateStore(url)
    assert store.served() == {"older": {"env_manager": "uv"}}
    assert store.update("older", {"workers": 3, "tags": (("team", "fraud"),)})
    assert store.served() == {
        "older": {"env_manager": "uv", "workers": 3, "tags": (("team", "fraud"),)}
    }
    store.engine.dispose()
    again = StateStore(url)  # opened again: nothing left to add
    assert again.served()["older"]["workers"] == 3
    again.engine.dispose()


def _answered(load: Load, phase: str | None = None) -> None:
    assert any(o.status == 200 for o in load.of("v1", phase)), load.summary()
