"""Two identical `modelhost up` nodes on one PostgreSQL server: one state database, one
registry database, one shared artifact folder. What is done through either node holds on both.

The nodes start together (they take turns migrating and starting), each serves every served
model from its own model servers, and each prints how long the other took to follow a change.
The last test stops the database itself: scoring goes on, /health says what is wrong.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from support import (
    ONE_ROW,
    Platform,
    Postgres,
    eventually,
    log_iris,
    model_servers,
    signed_in_as,
)

SERVING = "/api/2.0/mlflow/endpoints"
MODELHOST = "/api/2.0/modelhost"
SESSION = f"{MODELHOST}/session"
JOBS = f"{MODELHOST}/batch/jobs"
TOYS = Path(__file__).parents[1] / "toys"
MODEL = "fraud"
ADMIN_TOKEN = "mh_" + secrets.token_urlsafe(32)
DATABASES: dict[str, str] = {}  # the module's, by what they hold: their URLs have passwords


@dataclass
class Node:
    name: str
    platform: Platform

    def call(self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.request(
            method, self.platform.url + path, headers=headers, timeout=60, **kwargs
        )

    def score(self, token: str | None = ADMIN_TOKEN) -> httpx.Response:
        return self.call("POST", f"/model/{MODEL}/1/invocations", token, json=ONE_ROW)

    def serving(self, action: str, **fields) -> httpx.Response:
        fields["registered_model_name"] = MODEL
        if action in ("enable", "disable", "update-settings"):
            return self.call("POST", f"{SERVING}/{action}", json=fields)
        return self.call("GET", f"{SERVING}/{action}", params=fields)

    def events(self) -> list[dict]:
        return self.serving("events").json()["events"]


def followed(what: str, check, timeout_s: float = 30) -> float:
    """Wait until `check` passes; print and return how long it took."""
    started = time.monotonic()
    eventually(check, timeout_s)
    took = time.monotonic() - started
    print(f"\n{what}: {took:.2f} s")
    return took


@pytest.fixture(scope="module")
def database_server():
    """The module's own: its last test stops it."""
    with Postgres() as server:
        yield server


@pytest.fixture(scope="module")
def batch_root():
    """One batch folder for both nodes, as a team mounts one; outside pytest's folders, which
    the model user that runs jobs may not enter."""
    root = Path(tempfile.mkdtemp(prefix="modelhost-nodes-batch-"))
    (root / "data").mkdir()
    os.chmod(root / "data", 0o755)
    pd.DataFrame({"x": range(60), "seconds": 1.0}).to_csv(root / "data/slow.csv", index=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def nodes(database_server, batch_root, tmp_path_factory):
    postgres = database_server
    artifacts = tmp_path_factory.mktemp("shared-artifacts")
    DATABASES.update(
        state=postgres.database("nodes_state"), registry=postgres.database("nodes_registry")
    )
    shared = [
        "--auth", "--admin-token", ADMIN_TOKEN,
        "--state-uri", DATABASES["state"],
        "--registry-uri", DATABASES["registry"],
        "--artifacts-destination", str(artifacts),
        "--batch-root", str(batch_root),
    ]  # fmt: skip
    made = [
        Node(name, Platform(tmp_path_factory.mktemp(name) / "home", *shared, "--node-name", name))
        for name in ("node-a", "node-b")
    ]
    failures: list[BaseException] = []

    def start(node: Node) -> None:
        try:
            node.platform.start()
        except BaseException as e:  # the test fails below, with what went wrong
            failures.append(e)

    starting = [threading.Thread(target=start, args=(node,)) for node in made]
    for thread in starting:  # together: they must take turns with the empty databases
        thread.start()
    for thread in starting:
        thread.join()
    try:
        assert not failures, failures
        yield made
    finally:
        for node in made:
            if node.platform.process is not None:
                node.platform.stop()


def test_a_model_enabled_on_one_node_is_served_by_every_node(nodes, iris):
    a, b = nodes
    with signed_in_as(a.platform.url, ADMIN_TOKEN):
        mlflow.set_experiment("nodes")
        assert log_iris(iris, MODEL) == "1"
    enabled = time.monotonic()
    assert a.serving("enable").status_code == 200
    eventually(lambda: _serves(a), 120)
    print(f"\nnode-a serving the model it enabled: {time.monotonic() - enabled:.2f} s")
    followed("node-b serving it, after node-a", lambda: _serves(b), 60)
    # Each node runs its own model server, from the one shared copy of the model's files.
    assert model_servers(a.platform, MODEL) and model_servers(b.platform, MODEL)
    events = a.events()
    assert {e["node"] for e in events if e["message"] == "Version 1 is ready."} == {
        "node-a",
        "node-b",
    }
    assert b.events() == events  # either node shows every node's events


def test_either_node_lists_both_to_admins(nodes):
    b = nodes[1]
    for node in nodes:
        listed = node.call("GET", f"{MODELHOST}/nodes")
        assert listed.status_code == 200, listed.text
        shown = {n["name"]: n for n in listed.json()["nodes"]}
        assert set(shown) == {"node-a", "node-b"}
        assert all(n["alive"] for n in shown.values())
        assert shown["node-b"]["url"] == b.platform.url


def test_settings_changed_on_one_node_apply_on_every_node(nodes):
    a, b = nodes
    moved = "Routes moved to the model server with the new settings."
    assert b.serving("update-settings", max_batch_size=64).status_code == 200

    def both_moved() -> None:
        nodes_moved = {e["node"] for e in a.events() if e["message"] == moved}
        assert nodes_moved == {"node-a", "node-b"}, nodes_moved

    followed("both nodes restarted the model with node-b's settings", both_moved, 60)
    assert a.serving("get-status").json()["endpoint_status"]["settings"]["max_batch_size"] == 64
    assert _serves(a) is None and _serves(b) is None


def test_users_tokens_and_grants_made_on_one_node_hold_on_every_node(nodes):
    a, b = nodes
    assert a.call("POST", f"{MODELHOST}/users/create", json={"name": "carol"}).status_code == 200
    made = a.call("POST", f"{MODELHOST}/tokens/create", json={"user": "carol"}).json()
    token, token_id = made["token"], made["token_info"]["id"]

    def known_on_b() -> None:
        assert b.call("GET", f"{MODELHOST}/whoami", token).status_code == 200

    followed("node-b knowing node-a's new token", known_on_b, 10)
    assert b.score(token).status_code == 403  # signed in, but no grant yet
    assert b.call("GET", f"{MODELHOST}/nodes", token).status_code == 403  # for admins
    grant = {"target": MODEL, "user": "carol", "level": "READ"}
    assert b.call("POST", f"{MODELHOST}/permissions/grant", json=grant).status_code == 200
    followed("node-a honouring node-b's grant", lambda: _status(a.score(token), 200), 10)

    assert b.call("POST", f"{MODELHOST}/tokens/revoke", json={"id": token_id}).status_code == 200
    assert a.score(token).status_code in (200, 401)
    took = followed(
        "node-a refusing the token node-b revoked", lambda: _status(a.score(token), 401), 10
    )
    assert took < 10
    audit = a.call("GET", f"{MODELHOST}/permissions/audit", params={"target": MODEL}).json()
    assert any(e.get("node") == "node-b" for e in audit["events"]), audit


def test_a_browser_session_opened_on_one_node_is_known_to_every_node(nodes):
    a, b = nodes
    signed_in = a.call("POST", SESSION, None, json={"token": ADMIN_TOKEN})
    assert signed_in.status_code == 200, signed_in.text
    cookie = {"Cookie": signed_in.headers["set-cookie"].split(";")[0]}
    # At once on the other node: a balancer sends the browser's next request anywhere.
    whoami = b.call("GET", f"{MODELHOST}/whoami", None, headers=cookie)
    assert whoami.status_code == 200 and whoami.json()["user"]["name"] == "admin"
    page = {**cookie, "Origin": b.platform.url}
    assert b.call("DELETE", SESSION, None, headers=page).status_code == 200
    followed(
        "node-a ending the session signed out on node-b",
        lambda: _status(a.call("GET", f"{MODELHOST}/whoami", None, headers=cookie), 401),
        10,
    )


def test_a_batch_job_runs_on_the_node_that_took_it_and_is_cancelled_through_any(nodes):
    a, b = nodes
    with signed_in_as(a.platform.url, ADMIN_TOKEN):
        mlflow.set_experiment("nodes")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model", python_model=str(TOYS / "sleeper.py"),
                registered_model_name="sleepy", pip_requirements=["mlflow", "pandas"],
            )  # fmt: skip
    job_id = _slow_job_running(on=a, seen_by=b, output="out/slow")
    assert b.call("POST", f"{JOBS}/{job_id}/cancel").status_code == 200

    def cancelled() -> None:
        job = a.call("GET", f"{JOBS}/{job_id}").json()["job"]
        assert job["state"] == "CANCELLED", job
        assert job["message"] == "Cancelled by admin (on node node-b).", job

    followed("node-a cancelling its job, asked on node-b", cancelled, 30)


def test_serving_turned_off_on_one_node_stops_every_node(nodes):
    a, b = nodes
    assert b.serving("disable").status_code == 200

    def stopped_on_a() -> None:
        assert a.score().status_code == 404
        assert model_servers(a.platform, MODEL) == []

    followed("node-a stopping the model node-b disabled", stopped_on_a, 30)
    eventually(lambda: _assert_equal(model_servers(b.platform, MODEL), []), 30)


def test_health_says_the_state_database_is_away_while_models_go_on_answering(
    nodes, database_server
):
    a, b = nodes
    assert a.serving("enable").status_code == 200
    eventually(lambda: (_serves(a), _serves(b)), 120)
    database_server.kill()
    try:

        def unready(node: Node) -> None:
            health = httpx.get(f"{node.platform.url}/health", timeout=30)
            assert health.status_code == 503, health.text
            assert health.json()["status"] in ("STATE_STORE_UNREACHABLE", "REGISTRY_UNREACHABLE")
            assert health.json()["state_store"] is False

        for node in nodes:
            eventually(lambda node=node: unready(node), 30)
            # Scoring needs no database: the routes and the tokens are in memory.
            assert node.score().status_code == 200
    finally:
        database_server.start()
    for node in nodes:
        eventually(lambda node=node: _status(httpx.get(f"{node.platform.url}/health"), 200), 60)
        assert node.score().status_code == 200


def test_no_log_and_no_model_server_holds_a_database_password(nodes):
    passwords = [sa.engine.make_url(url).password for url in DATABASES.values()]
    assert all(passwords)
    for node in nodes:
        assert model_servers(node.platform, MODEL)  # served again by the test before
        home = node.platform.home
        logs = [node.platform.log_path, *home.glob("registry/*.log"), *home.glob("logs/**/*.log")]
        for log in logs:
            text = log.read_text(errors="replace")
            assert not any(password in text for password in passwords), log
        for pid in model_servers(node.platform, MODEL):
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert "MODELHOST" not in environ
            assert not any(password in environ for password in passwords)


def test_a_node_that_dies_takes_only_its_capacity_and_its_jobs_say_so(nodes):
    """Last: it kills node-b for good."""
    a, b = nodes
    job_id = _slow_job_running(on=b, seen_by=a, output="out/orphan")
    b.platform.process.send_signal(signal.SIGKILL)
    b.platform.process.wait(timeout=30)
    try:
        _serves(a)  # a serves on, alone

        def failed_by_a() -> None:
            job = a.call("GET", f"{JOBS}/{job_id}").json()["job"]
            assert job["state"] == "FAILED", job
            assert job["message"].startswith("Its node node-b stopped"), job

        followed("node-a ending the job of dead node-b", failed_by_a, 120)
        _serves(a)
        shown = {n["name"]: n["alive"] for n in a.call("GET", f"{MODELHOST}/nodes").json()["nodes"]}
        assert shown == {"node-a": True, "node-b": False}
    finally:  # a job's process outlives its node, which stops it when it starts again
        for pid in _processes_of_job(job_id):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _slow_job_running(on: Node, seen_by: Node, output: str) -> str:
    """A minute-long job of the sleeper submitted to `on`, once `seen_by` shows it RUNNING
    there; its id."""
    body = {"model_uri": "models:/sleepy/1", "input": "data/slow.csv", "output": output,
            "chunk_rows": 1}  # fmt: skip
    submitted = on.call("POST", JOBS, json=body)
    assert submitted.status_code == 200, submitted.text
    job_id = submitted.json()["job"]["job_id"]

    def running() -> None:
        job = seen_by.call("GET", f"{JOBS}/{job_id}").json()["job"]
        assert (job["state"], job["node"]) == ("RUNNING", on.name), job

    eventually(running, 120)
    return job_id


def _processes_of_job(job_id: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if f"batch-{job_id}".encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def _serves(node: Node) -> None:
    answer = node.score()
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] in ([0], [1], [2])


def _status(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text


def _assert_equal(found, expected) -> None:
    assert found == expected
