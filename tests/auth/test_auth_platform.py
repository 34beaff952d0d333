"""A reader, an editor, a manager and a stranger walk through `modelhost up` with auth on.

One platform for the module, bound to 0.0.0.0 so auth turns on by itself and the first admin's
token is printed; everyone else gets a user and a token from the command line, and every answer
on the serving routes and through MLflow's own client against the registry is checked.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from dataclasses import dataclass

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from support import ONE_ROW, Platform, eventually, log_iris, modelhost, signed_in_as

API = "/api/2.0/preview/mlflow/endpoints"
MODEL = "prod.ml_team.iris"
PEOPLE = ("reader", "editor", "manager", "stranger")


@dataclass
class World:
    url: str
    log_path: object
    tokens: dict[str, str]  # who -> token; "admin" too

    def call(self, who: str | None, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def score(self, who: str | None, ref: str = "1", name: str = MODEL) -> httpx.Response:
        return self.call(who, "POST", f"/model/{name}/{ref}/invocations", json=ONE_ROW)

    def serving(self, who: str, action: str, name: str = MODEL) -> httpx.Response:
        if action in ("enable", "disable"):
            return self.call(who, "POST", f"{API}/{action}", json={"registered_model_name": name})
        return self.call(who, "GET", f"{API}/{action}", params={"registered_model_name": name})

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess:
        return modelhost(self.url, self.tokens[who], *args)


@contextlib.contextmanager
def signed_in(world: World, who: str):
    with signed_in_as(world.url, world.tokens[who]) as client:
        yield client


@pytest.fixture(scope="module")
def world(tmp_path_factory, iris):
    with Platform(tmp_path_factory.mktemp("auth") / "home", "--host", "0.0.0.0") as platform:
        printed = re.findall(r"^\s+(mh_\S+)$", platform.log_path.read_text(), re.MULTILINE)
        assert len(printed) == 1, "the first admin's token is printed once"
        world = World(platform.url, platform.log_path, {"admin": printed[0]})
        for who in PEOPLE:
            kind = ["--service-principal"] if who == "stranger" else []
            made = world.cli("admin", "users", "create", who, *kind)
            assert made.returncode == 0, made.stderr
            token = world.cli("admin", "tokens", "create", "--user", who)
            world.tokens[who] = token.stdout.strip()
        with signed_in(world, "admin"):
            mlflow.set_experiment("auth")
            assert log_iris(iris, MODEL) == "1"
        for who, target, level in [
            ("reader", "prod.ml_team.*", "READ"),
            ("editor", MODEL, "EDIT"),
            ("manager", MODEL, "MANAGE"),
        ]:
            granted = world.cli("admin", "permissions", "grant", target, "--user", who,
                                "--level", level)  # fmt: skip
            assert granted.returncode == 0, granted.stderr
        assert world.serving("manager", "enable").status_code == 200
        eventually(lambda: _ready(world, "1"))
        yield world


def _ready(world: World, version: str) -> None:
    assert world.score("reader", version).status_code == 200


def _refused(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    return answer.json()["error_code"]


def test_signing_in(world):
    assert httpx.get(f"{world.url}/health").status_code == 200  # open, for load balancers
    missing = world.score(None)
    assert _refused(missing, 401) == "UNAUTHENTICATED"
    assert missing.headers.get_list("www-authenticate") == [
        'Bearer realm="modelhost"', 'Basic realm="modelhost"'
    ]  # fmt: skip
    bad = httpx.post(f"{world.url}/model/{MODEL}/1/invocations", json=ONE_ROW,
                     headers={"Authorization": "Bearer mh_not-a-token"})  # fmt: skip
    assert _refused(bad, 401) == "UNAUTHENTICATED" and "www-authenticate" in bad.headers
    # HTTP Basic with user `token`, as `curl -u token:$TOKEN` sends it.
    basic = httpx.post(f"{world.url}/model/{MODEL}/1/invocations", json=ONE_ROW,
                       auth=("token", world.tokens["reader"]))  # fmt: skip
    assert basic.status_code == 200 and set(basic.json()) == {"predictions"}
    whoami = world.call("stranger", "GET", "/api/2.0/modelhost/whoami").json()
    assert whoami == {"user": {"name": "stranger", "kind": "service_principal", "admin": False}}
    # The registry behind the gateway wants a token too.
    assert httpx.get(f"{world.url}/api/2.0/mlflow/experiments/search").status_code == 401


def test_only_admins_read_metrics(world):
    def get(who: str | None) -> httpx.Response:
        return world.call(who, "GET", "/metrics")

    refused = get("reader")
    assert refused.status_code == 403
    assert refused.json()["error_code"] == "PERMISSION_DENIED"
    assert "admins" in refused.json()["message"]
    assert get(None).status_code == 401
    allowed = get("admin")
    assert allowed.status_code == 200
    assert "modelhost_gateway_requests_in_flight" in allowed.text


def test_scoring_and_serving_control_follow_the_levels(world):
    for who in ("reader", "editor", "manager", "admin"):
        assert world.score(who).status_code == 200, who
    denied = world.score("stranger")
    assert _refused(denied, 403) == "PERMISSION_DENIED"
    # The same answer for a model that does not exist: nothing is told to who may not read.
    absent = world.score("stranger", name="prod.ml_team.nothing")
    assert _refused(absent, 403) == "PERMISSION_DENIED"
    assert absent.json()["message"] == denied.json()["message"].replace("iris", "nothing")
    assert world.score("reader", "7").status_code == 404  # a reader is told what is missing

    for who in ("reader", "editor", "stranger"):
        assert _refused(world.serving(who, "disable"), 403) == "PERMISSION_DENIED"
        assert _refused(world.serving(who, "logs"), 403) == "PERMISSION_DENIED"
    assert _refused(world.serving("stranger", "get-status"), 403) == "PERMISSION_DENIED"
    status = world.serving("reader", "get-status")
    assert status.status_code == 200, status.text
    assert status.json()["endpoint_status"]["state"] == "ENDPOINT_STATE_READY"
    assert world.serving("editor", "list-versions").status_code == 200
    assert "Loading version 1" in world.serving("manager", "logs").json()["logs"]
    listed = {who: world.call(who, "GET", f"{API}/list").json()["endpoints"] for who in PEOPLE}
    assert [e["registered_model_name"] for e in listed["reader"]] == [MODEL]
    assert listed["stranger"] == []

    assert world.serving("manager", "disable").status_code == 200
    for who in ("reader", "editor", "stranger"):
        assert _refused(world.serving(who, "enable"), 403) == "PERMISSION_DENIED"
    assert world.serving("manager", "enable").status_code == 200
    events = world.serving("reader", "events").json()["events"]
    audit = [(e["message"], e["user"]) for e in events if e["user"]]
    assert ("Serving turned off.", "manager") in audit
    assert ("Serving turned on.", "manager") in audit
    eventually(lambda: _ready(world, "1"))


def test_the_registry_follows_the_levels_through_mlflows_client(world, iris):
    with signed_in(world, "editor"):
        mlflow.set_experiment("editor's")  # runs follow experiments: the editor's own
        assert log_iris(iris, MODEL) == "2"  # registering a version needs EDIT on the model
        MlflowClient().set_registered_model_alias(MODEL, "champion", "2")
    eventually(lambda: _ready(world, "champion"))  # a reader scores every served version
    source = None
    with signed_in(world, "reader") as client:
        version = client.get_model_version(MODEL, "1")
        source, run_id = version.source, version.run_id
        assert [m.name for m in client.search_registered_models()] == [MODEL]
        for refused in (
            lambda: client.create_model_version(MODEL, source, run_id),
            lambda: client.set_registered_model_alias(MODEL, "champion", "1"),
            lambda: client.set_registered_model_tag(MODEL, "team", "ml"),
        ):
            with pytest.raises(MlflowException) as caught:
                refused()
            assert caught.value.error_code == "PERMISSION_DENIED"
    with signed_in(world, "manager") as client:
        client.set_registered_model_tag(MODEL, "team", "ml")  # MANAGE covers EDIT
    with signed_in(world, "stranger") as client:
        assert client.search_registered_models() == []
        assert client.search_model_versions(f"name='{MODEL}'") == []
        messages = []
        for name in (MODEL, "prod.ml_team.nothing"):
            with pytest.raises(MlflowException) as caught:
                client.get_registered_model(name)
            assert caught.value.error_code == "PERMISSION_DENIED"
            messages.append(caught.value.message.replace(name, "NAME"))
        assert messages[0] == messages[1]  # whether it exists is not told
        with pytest.raises(MlflowException) as caught:
            client.create_model_version(MODEL, source, run_id)
        assert caught.value.error_code == "PERMISSION_DENIED"
        # A name in no one's namespace is free to create, and its creator manages it; one under
        # a granted prefix is not.
        client.create_registered_model("sandbox.stranger model")
        with pytest.raises(MlflowException) as caught:
            client.create_registered_model("prod.ml_team.mine")
        assert caught.value.error_code == "PERMISSION_DENIED"
    mine = world.cli("stranger", "permissions", "list", "--user", "stranger")
    assert '"target": "sandbox.stranger model"' in mine.stdout and '"MANAGE"' in mine.stdout


def test_managers_grant_and_revoke_with_the_command_line(world):
    for who in ("reader", "editor", "stranger"):
        refused = world.cli(who, "permissions", "grant", MODEL, "--user", "stranger",
                            "--level", "READ")  # fmt: skip
        assert refused.returncode == 1 and "needs MANAGE" in refused.stderr, refused.stderr
    granted = world.cli("manager", "permissions", "grant", MODEL, "--user", "stranger",
                        "--level", "read")  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    assert world.score("stranger").status_code == 200  # at once: no stale cache
    shown = world.cli("manager", "permissions", "list", MODEL).stdout
    assert '"user": "stranger"' in shown and '"target": "prod.ml_team.*"' in shown
    revoked = world.cli("manager", "permissions", "revoke", MODEL, "--user", "stranger")
    assert revoked.returncode == 0, revoked.stderr
    assert _refused(world.score("stranger"), 403) == "PERMISSION_DENIED"
    # A manager of one model may not grant on the prefix around it.
    wider = world.cli("manager", "permissions", "grant", "prod.*", "--user", "manager",
                      "--level", "MANAGE")  # fmt: skip
    assert wider.returncode == 1
    events = world.serving("reader", "events").json()["events"]
    audit = [(e["message"], e["user"]) for e in events]
    assert ("READ granted to stranger.", "manager") in audit
    assert ("The grant of stranger was revoked.", "manager") in audit
    assert ("READ granted to reader.", "admin") not in audit  # that one is the prefix's
    assert world.cli("reader", "users", "list").returncode == 1  # users are for admins
    prefix = world.cli("admin", "permissions", "audit", "prod.ml_team.*").stdout
    assert '"message": "READ granted to reader."' in prefix and '"user": "admin"' in prefix
    assert world.cli("manager", "permissions", "audit", "prod.ml_team.*").returncode == 1


def test_revoked_tokens_stop_and_guessing_is_slowed_down(world):
    extra = world.cli("reader", "tokens", "create", "--comment", "ci").stdout.strip()
    headers = {"Authorization": f"Bearer {extra}"}
    url = f"{world.url}/model/{MODEL}/1/invocations"
    assert httpx.post(url, json=ONE_ROW, headers=headers).status_code == 200
    listed = world.cli("reader", "tokens", "list").stdout
    token_id = re.findall(r'"id": "(\w+)",\s+"user": "reader",\s+"comment": "ci"', listed)
    assert len(token_id) == 1 and extra not in listed
    assert world.cli("reader", "tokens", "revoke", token_id[0]).returncode == 0
    assert httpx.post(url, json=ONE_ROW, headers=headers).status_code == 401
    assert world.cli("stranger", "tokens", "revoke", token_id[0]).returncode == 1

    statuses = []
    for attempt in range(15):
        wrong = {"Authorization": f"Bearer mh_guess{attempt}"}
        statuses.append(httpx.post(url, json=ONE_ROW, headers=wrong))
        assert world.score("reader").status_code == 200  # who signs in is never slowed down
    assert {s.status_code for s in statuses} == {401, 429}
    limited = [s for s in statuses if s.status_code == 429]
    assert int(limited[0].headers["retry-after"]) >= 1


def test_tokens_never_reach_the_log(world):
    written = world.log_path.read_text()
    assert written.count(world.tokens["admin"]) == 1  # printed once, at first start
    for who in PEOPLE:
        assert world.tokens[who] not in written
    assert "READ granted to stranger" in written  # the audit log is there
