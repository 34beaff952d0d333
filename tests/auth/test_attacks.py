"""An attacker with an ordinary token (a stranger: signed in, no grant), a reader and no token
at all, against `modelhost up` with auth on: each way around a grant found so far stays closed.

Paths are sent exactly as written (`support.raw_request`), since HTTP clients resolve `..`
before sending and an attacker's do not.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from requests import HTTPError
from support import (
    ONE_ROW,
    Platform,
    eventually,
    log_iris,
    modelhost,
    raw_request,
    signed_in_as,
)

SECRET = "team.secret"  # the admin's, served; the reader reads every `team.*` model
MLFLOW = "/api/2.0/mlflow"
ENDPOINTS = "/api/2.0/preview/mlflow/endpoints"
TOYS = os.path.join(os.path.dirname(__file__), "..", "toys")


class Attack:
    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        self.tokens = tokens

    def send(self, who: str | None, method: str, path: str, body: object = None):
        return raw_request(self.url, method, path, self.tokens.get(who), body)

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess:
        return modelhost(self.url, self.tokens[who], *args)

    def client(self, who: str):
        return signed_in_as(self.url, self.tokens[who])


@pytest.fixture(scope="module")
def attack(tmp_path_factory, iris):
    home = tmp_path_factory.mktemp("attacks") / "home"
    with Platform(home, "--host", "0.0.0.0", "--max-artifact-mb", "1") as platform:
        printed = re.findall(r"^\s+(mh_\S+)$", platform.log_path.read_text(), re.MULTILINE)
        attack = Attack(platform.url, {"admin": printed[0]})
        for who in ("reader", "stranger"):
            assert attack.cli("admin", "users", "create", who).returncode == 0
            attack.tokens[who] = attack.cli("admin", "tokens", "create", "--user", who).stdout
            attack.tokens[who] = attack.tokens[who].strip()
        with attack.client("admin") as admin:
            mlflow.set_experiment("attacks")
            assert log_iris(iris, SECRET) == "1"
            admin.set_registered_model_alias(SECRET, "champion", "1")
            for name in ("team.a", "team.b", "other.hidden"):
                admin.create_registered_model(name)
        granted = attack.cli("admin", "permissions", "grant", "team.*", "--user", "reader",
                             "--level", "READ")  # fmt: skip
        assert granted.returncode == 0, granted.stderr
        enabled = attack.send("admin", "POST", f"{ENDPOINTS}/enable",
                              {"registered_model_name": SECRET})  # fmt: skip
        assert enabled[0] == 200, enabled
        eventually(lambda: _scored(attack, "admin", SECRET), timeout_s=120)
        yield attack


def _scored(attack: Attack, who: str, name: str) -> dict:
    status, answer = attack.send(who, "POST", f"/model/{name}/1/invocations", ONE_ROW)
    assert status == 200, answer
    return answer


def test_dot_segments_are_resolved_before_the_policy_judges(attack):
    get = f"?name={SECRET}"
    for path in (
        f"{MLFLOW}/x/../registered-models/get{get}",
        f"{MLFLOW}/./registered-models/get{get}",
        f"{MLFLOW}/%2e%2e/mlflow/registered-models/get{get}",
        f"/api/2.0/mlflow-artifacts/../mlflow/registered-models/get{get}",
        f"/api/3.0/mlflow/../../2.0/mlflow/registered-models/get{get}",
        f"/ajax-api/x/../2.0/mlflow/registered-models/get{get}",
        f"//api/2.0//mlflow/registered-models/get{get}",
    ):
        assert attack.send("stranger", "GET", path)[0] == 403, path
        assert attack.send(None, "GET", path)[0] == 401, path
        status, answer = attack.send("reader", "GET", path)  # the same path serves who may read
        assert status == 200 and answer["registered_model"]["name"] == SECRET, path
    for method, path, body in [
        ("POST", f"{MLFLOW}/x/../registered-models/set-tag",
         {"name": SECRET, "key": "owner", "value": "stranger"}),
        ("POST", f"{MLFLOW}/x/../registered-models/alias",
         {"name": SECRET, "alias": "champion", "version": "1"}),
        ("DELETE", f"{MLFLOW}/x/../registered-models/delete", {"name": SECRET}),
        ("GET", f"{MLFLOW}/x/../webhooks", None),
        ("POST", f"{MLFLOW}/x/../webhooks", {"name": "w", "url": "http://127.0.0.1:9/"}),
        ("POST", f"{ENDPOINTS}/x/../disable", {"registered_model_name": SECRET}),
        ("GET", f"{ENDPOINTS}/../endpoints/logs?registered_model_name={SECRET}", None),
        ("POST", f"/model/x/../{SECRET}/1/invocations", ONE_ROW),
    ]:  # fmt: skip
        assert attack.send("stranger", method, path, body)[0] == 403, path
    status, searched = attack.send("stranger", "GET", f"{MLFLOW}/x/../model-versions/search")
    assert (status, searched) == (200, {})
    assert attack.send("admin", "GET", f"{MLFLOW}/registered-models/get{get}")[0] == 200
    _scored(attack, "reader", SECRET)  # still served: nothing was deleted or turned off


def test_paths_without_one_reading_are_refused(attack):
    for path in (
        f"{MLFLOW}/registered-models%2Fget?name={SECRET}",
        f"/model/{SECRET}%2F1/invocations",
        f"{MLFLOW}/x%5c..%5cwebhooks",
        "/api/2.0/modelhost/permissions%2Faudit?target=team.*",
        "/../api/2.0/mlflow/webhooks",
    ):
        status, answer = attack.send("stranger", "GET", path)
        assert status == 400 and answer["error_code"] == "BAD_REQUEST", (path, answer)


def test_routes_the_policy_does_not_know_are_refused(attack):
    for method, path in [
        ("GET", f"{MLFLOW}/registered-models/get-everything"),
        ("HEAD", f"{MLFLOW}/registered-models/get?name={SECRET}"),
        ("OPTIONS", f"{MLFLOW}/runs/get"),
        ("GET", "/api/3.0/mlflow/gateway/secrets/list"),
        ("POST", "/ajax-api/3.0/mlflow/workspaces"),
        ("GET", "/api/2.0/mlflow-artifacts/presigned/1/x"),
    ]:
        assert attack.send("stranger", method, path)[0] == 403, (method, path)
    # Scoring names held before and still do: case, lookalikes, a name with a slash.
    for name in ("TEAM.SECRET", "team.secreT", "team\u2024secret"):
        path = f"/model/{quote(name)}/1/invocations"
        assert attack.send("stranger", "POST", path, ONE_ROW)[0] == 403, name
    assert attack.send("stranger", "POST", "/model/team/secret/1/invocations", ONE_ROW)[0] == 404


def test_names_that_grants_read_as_prefixes_are_refused(attack):
    for who in ("stranger", "admin"):
        for name in ("team.*", "*", "sandbox.x*y"):
            status, answer = attack.send(who, "POST", f"{MLFLOW}/registered-models/create",
                                         {"name": name})  # fmt: skip
            assert status == 400 and "cannot contain '*'" in answer["message"], (who, name)
    with attack.client("stranger") as client:
        client.create_registered_model("sandbox.stranger")
        with pytest.raises(MlflowException, match="cannot contain"):
            client.rename_registered_model("sandbox.stranger", "team.*")
    mine = attack.cli("stranger", "permissions", "list", "--user", "stranger").stdout
    assert '"target": "sandbox.stranger"' in mine and "*" not in mine
    # The stranger manages the exact name only: nothing of `team.*` came with it.
    assert attack.send("stranger", "POST", f"/model/{SECRET}/1/invocations", ONE_ROW)[0] == 403


def test_grants_follow_their_model(attack):
    with attack.client("admin") as admin:
        admin.create_registered_model("dev.gone")
        admin.create_registered_model("dev.old")
    for target in ("dev.gone", "dev.old"):
        granted = attack.cli("admin", "permissions", "grant", target, "--user", "stranger",
                             "--level", "MANAGE")  # fmt: skip
        assert granted.returncode == 0, granted.stderr
    with attack.client("admin") as admin:
        admin.delete_registered_model("dev.gone")  # by an admin: the grant goes all the same
        admin.create_registered_model("dev.gone")  # a new model under the same name
        admin.rename_registered_model("dev.old", "dev.new")
    grants = attack.cli("admin", "permissions", "list", "--user", "stranger").stdout
    assert '"target": "dev.gone"' not in grants and '"target": "dev.old"' not in grants
    assert '"target": "dev.new"' in grants
    get = f"{MLFLOW}/registered-models/get?name="
    assert attack.send("stranger", "GET", get + "dev.gone")[0] == 403
    assert attack.send("stranger", "GET", get + "dev.new")[0] == 200


def test_search_tells_nothing_of_what_the_caller_may_not_read(attack):
    def search(who: str, route: str, query: str) -> dict:
        status, answer = attack.send(who, "GET", f"{MLFLOW}/{route}/search?{query}")
        assert status == 200, answer
        return answer

    for route in ("registered-models", "model-versions"):
        for query in (f"filter=name%3D%27{SECRET}%27", "filter=name%3D%27team.nothing%27",
                      "filter=name+LIKE+%27team.%25%27", "filter=name+LIKE+%27o%25%27"
                      "&max_results=1&order_by=name+DESC"):  # fmt: skip
            assert search("stranger", route, query) == {}, (route, query)
    everything = search("stranger", "registered-models", "")["registered_models"]
    assert not {m["name"] for m in everything} & {SECRET, "team.a", "team.b", "other.hidden"}
    # A reader pages through what it may read, and only that.
    names, token = [], ""
    for _ in range(5):
        page = search("reader", "registered-models", f"max_results=2{token}")
        names += [model["name"] for model in page["registered_models"]]
        if "next_page_token" not in page:
            break
        token = f"&page_token={page['next_page_token']}"
    assert sorted(names) == ["team.a", "team.b", SECRET]
    versions = search("reader", "model-versions", f"filter=name%3D%27{SECRET}%27")
    assert [v["version"] for v in versions["model_versions"]] == ["1"]
    bad = attack.send("reader", "GET", f"{MLFLOW}/registered-models/search?page_token=abc")
    assert bad[0] == 400 and "page_token" in bad[1]["message"]
    with attack.client("stranger") as client:
        assert client.search_registered_models(f"name = '{SECRET}'") == []
        assert client.search_registered_models("name = 'team.nothing'") == []


def test_model_servers_never_see_the_callers_credentials(attack):
    """A model is code: the stranger serves one that reads every header its server receives,
    and the admin scores it."""
    with attack.client("stranger"):
        mlflow.set_experiment("stranger")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model", python_model=os.path.join(TOYS, "header_thief.py"),
                registered_model_name="sandbox.thief",
                pip_requirements=["mlflow", "pandas"],
                signature=infer_signature(pd.DataFrame({"x": [1.0]}), ["seen"]),
            )  # fmt: skip
    enabled = attack.send("stranger", "POST", f"{ENDPOINTS}/enable",
                          {"registered_model_name": "sandbox.thief"})  # fmt: skip
    assert enabled[0] == 200, enabled
    headers = {
        "Authorization": f"Bearer {attack.tokens['admin']}",
        "Cookie": f"session={attack.tokens['admin']}",
        "Proxy-Authorization": f"Bearer {attack.tokens['admin']}",
    }
    body = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}

    def stolen() -> set[str]:
        answer = httpx.post(f"{attack.url}/model/sandbox.thief/1/invocations", json=body,
                            headers=headers, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return set(answer.json()["predictions"][0].split(","))

    seen = eventually(stolen, timeout_s=120)
    assert "content-type" in seen  # the model did see the request's headers...
    assert not seen & {"authorization", "cookie", "proxy-authorization"}  # ...but no credential


def test_files_follow_their_experiment_and_their_registered_model(attack, tmp_path):
    with attack.client("admin") as admin:
        version = admin.get_model_version(SECRET, "1")
        model = admin.get_logged_model(version.source.removeprefix("models:/"))
        with mlflow.start_run(experiment_id=model.experiment_id) as run:  # a plain run's file
            mlflow.log_text("hello", "notes.txt")
    store = "/api/2.0/mlflow-artifacts/artifacts/"
    secret_files = model.artifact_location.removeprefix("mlflow-artifacts:/")
    notes = f"{run.info.artifact_uri.removeprefix('mlflow-artifacts:/')}/notes.txt"
    reads = [
        f"{store}{secret_files}/MLmodel",
        f"/api/2.0/mlflow-artifacts/artifacts?path={secret_files}",
        f"/ajax-api/2.0/mlflow/logged-models/{model.model_id}/artifacts/files"
        "?artifact_file_path=MLmodel",
        f"{MLFLOW}/logged-models/{model.model_id}/artifacts/directories",
        f"{MLFLOW}/artifacts/list?run_id={version.run_id}",
    ]
    for path in reads:
        assert attack.send("stranger", "GET", path)[0] == 403, path
        assert attack.send("reader", "GET", path)[0] == 200, path  # READ on the model suffices
    for method in ("PUT", "DELETE"):
        for who in ("stranger", "reader"):
            status, _ = attack.send(who, method, f"{store}{secret_files}/MLmodel", body="x")
            assert status == 403, (who, method)
    uris = (version.source, f"runs:/{version.run_id}/model", f"models:/{SECRET}/1",
            f"mlflow-artifacts:/{secret_files}")  # fmt: skip
    for n, uri in enumerate(uris):  # MLflow's client, by every URI that reaches the files
        with attack.client("stranger"), pytest.raises((MlflowException, HTTPError)):
            mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / f"stolen{n}"))
        assert not list((tmp_path / f"stolen{n}").rglob("MLmodel")), uri
        with attack.client("reader"):
            fetched = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / f"read{n}"))
        assert list(Path(fetched).rglob("MLmodel")), uri
    # A plain run's files: read by all (MLflow's default READ), changed by none but its managers.
    assert attack.send("stranger", "GET", f"{store}{notes}")[0] == 200
    assert attack.send("stranger", "PUT", f"{store}{notes}", body="overwritten")[0] == 403
    assert attack.send("stranger", "DELETE", f"{store}{notes}")[0] == 403
    assert attack.send("admin", "GET", f"{store}{notes}")[1] == {"text": "hello"}
    # Paths that name no experiment, or would read differently behind the gateway.
    for path in (f"{store}mine/x", f"{store}%2531/x", "/api/2.0/mlflow-artifacts/artifacts"):
        assert attack.send("stranger", "GET", path)[0] in (400, 403), path
    # An id is no pattern: `_` would be a wildcard when finding the versions files back.
    assert attack.send("stranger", "GET", f"{store}1/models/m-a_b/artifacts/x")[0] == 400


def test_creators_manage_their_experiments_and_uploads_are_bounded(attack, tmp_path):
    with attack.client("stranger"):
        experiment = mlflow.set_experiment("stranger's own")
        with mlflow.start_run() as run:
            mlflow.log_text("mine", "mine.txt")
        small = tmp_path / "small.bin"
        small.write_bytes(b"x" * 1000)
        mlflow.log_artifact(str(small), run_id=run.info.run_id)
    own = f"/api/2.0/mlflow-artifacts/artifacts/{experiment.experiment_id}/{run.info.run_id}"
    assert attack.send("stranger", "DELETE", f"{own}/artifacts/mine.txt")[0] == 200
    grants = attack.cli("stranger", "permissions", "list", "--user", "stranger").stdout
    assert f'"target": "experiment:{experiment.experiment_id}"' in grants
    signed = {"Authorization": f"Bearer {attack.tokens['stranger']}"}
    large = httpx.put(f"{attack.url}{own}/artifacts/large.bin", content=b"x" * (2 << 20),
                      headers=signed)  # fmt: skip
    assert large.status_code == 413 and "--max-artifact-mb" in large.json()["message"]
    chunked = httpx.put(f"{attack.url}{own}/artifacts/chunked.bin", content=iter([b"x"] * 10),
                        headers=signed)  # fmt: skip
    assert chunked.status_code == 411
    # The reader may read the stranger's experiment (the default) but not write to it.
    assert attack.send("reader", "GET", f"{own}/artifacts/small.bin")[0] == 200
    assert attack.send("reader", "PUT", f"{own}/artifacts/small.bin", body="x")[0] == 403


def test_logged_models_tell_only_the_versions_the_caller_may_read(attack):
    with attack.client("admin") as admin:
        model_id = admin.get_model_version(SECRET, "1").source.removeprefix("models:/")
    path = f"{MLFLOW}/logged-models/{model_id}"

    def versions_tag(who: str) -> list:
        status, answer = attack.send(who, "GET", path)
        assert status == 200, answer
        tags = answer["model"]["info"].get("tags", [])
        return [t["value"] for t in tags if t["key"] == "mlflow.modelVersions"]

    assert versions_tag("stranger") == []
    assert SECRET in versions_tag("reader")[0]
    search = {"experiment_ids": [attack.send("admin", "GET", path)[1]["model"]["info"]
                                 ["experiment_id"]]}  # fmt: skip
    status, found = attack.send("stranger", "POST", f"{MLFLOW}/logged-models/search", search)
    assert status == 200 and SECRET not in str(found)
    by_tag = {**search, "filter": "tags.`mlflow.modelVersions` LIKE '%team.%'"}
    assert attack.send("stranger", "POST", f"{MLFLOW}/logged-models/search", by_tag)[0] == 403


def test_runs_and_experiments_follow_their_experiment(attack):
    with attack.client("admin"):
        experiment = mlflow.set_experiment("the admin's")
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 0.5)
    experiment_id, run_id = experiment.experiment_id, run.info.run_id
    changes = [
        ("runs/log-metric", {"run_id": run_id, "key": "loss", "value": 9.0, "timestamp": 1}),
        ("runs/set-tag", {"run_id": run_id, "key": "owner", "value": "stranger"}),
        ("runs/update", {"run_id": run_id, "status": "FAILED"}),
        ("runs/delete", {"run_id": run_id}),
        ("runs/create", {"experiment_id": experiment_id}),
        ("experiments/update", {"experiment_id": experiment_id, "new_name": "mine now"}),
        ("experiments/delete", {"experiment_id": experiment_id}),
    ]
    changes.append(("experiments/create", {"name": "x", "artifact_location": "file:///"}))
    for route, body in changes:
        assert attack.send("stranger", "POST", f"{MLFLOW}/{route}", body)[0] == 403, route
    # Reading is MLflow's default for experiments no grant names.
    assert attack.send("stranger", "GET", f"{MLFLOW}/runs/get?run_id={run_id}")[0] == 200
    search = {"experiment_ids": [experiment_id]}
    assert attack.send("stranger", "POST", f"{MLFLOW}/runs/search", search)[0] == 200
    # A run that does not exist is refused as one that is not the caller's.
    missing = attack.send("stranger", "POST", f"{MLFLOW}/runs/delete", {"run_id": "0" * 32})
    assert missing[0] == 403
    with attack.client("admin") as admin:
        assert admin.get_run(run_id).data.metrics == {"loss": 0.5}
        assert admin.get_run(run_id).info.lifecycle_stage == "active"
    # A grant of EDIT on the experiment lets the stranger log into it, not delete it.
    granted = attack.cli("admin", "permissions", "grant", f"experiment:{experiment_id}",
                         "--user", "stranger", "--level", "EDIT")  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    assert attack.send("stranger", "POST", f"{MLFLOW}/{changes[0][0]}", changes[0][1])[0] == 200
    assert attack.send("stranger", "POST", f"{MLFLOW}/runs/delete", {"run_id": run_id})[0] == 403


def test_what_held_still_holds(attack):
    """Smuggling, body limits, bad JSON, modelhost's own API, and the same 403 for a model that
    exists and one that does not."""
    reader = attack.tokens["reader"]
    smuggled = (
        f"POST /model/{SECRET}/1/invocations HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {reader}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        "\r\n0\r\n\r\nGET /api/2.0/mlflow/webhooks HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    host, port = attack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(smuggled.encode())
        answered = b""
        while chunk := connection.recv(65536):  # the gateway closes after its one answer
            answered += chunk
    assert answered.startswith(b"HTTP/1.1 400") and answered.count(b"HTTP/1.1 ") == 1
    score = f"/model/{SECRET}/1/invocations"
    assert attack.send("reader", "POST", score, "not JSON at all")[0] == 400
    too_large = httpx.post(f"{attack.url}{score}", content=b"x" * (17 << 20),
                           headers={"Authorization": f"Bearer {reader}"}, timeout=60)  # fmt: skip
    assert too_large.status_code == 413
    _scored(attack, "reader", SECRET)  # the model server took no harm
    for method, path, body in [
        ("POST", "/api/2.0/modelhost/users/create", {"name": "mallory", "admin": True}),
        ("POST", "/api/2.0/modelhost/permissions/grant",
         {"target": SECRET, "user": "stranger", "level": "MANAGE"}),
        ("GET", f"/api/2.0/modelhost/permissions/audit?target={SECRET}", None),
        ("GET", "/api/2.0/modelhost/users/list", None),
    ]:  # fmt: skip
        assert attack.send("stranger", method, path, body)[0] == 403, path
        assert attack.send(None, method, path, body)[0] == 401, path
    messages = []
    for name in (SECRET, "team.nothing"):
        status, answer = attack.send(
            "stranger", "GET", f"{ENDPOINTS}/events?registered_model_name={name}"
        )
        assert status == 403
        messages.append(answer["message"].replace(name, "NAME"))
    assert messages[0] == messages[1]
