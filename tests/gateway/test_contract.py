"""The gateway keeps the contract it publishes at /openapi.json, fuzzed with schemathesis.

`modelhost up` runs once open (loopback, no auth) with the demo model served, and once with
`--auth`; schemathesis sends examples, boundary cases, undeclared methods and generated requests
to every documented operation, as anyone (open), then as a signed-in user with no grants, with
no token at all and as an admin (auth on), and checks that no answer is a 5xx, that every
status is one the operation documents, that content types and bodies match their schemas, and
that a method a path does not take gets 405 with `Allow`.

Schemathesis runs as its command line (`st run`) in a subprocess: its engine, Hypothesis
settings and threads stay apart from pytest's, and a failure prints its report, seed and a
`curl` line that reproduces it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import ONE_ROW, Platform, eventually

# 40 characters, for MODELHOST_ADMIN_TOKEN: the test knows the admin's token.
ADMIN_TOKEN = "contract-admin-token-0123456789abcdefghij"
MODEL = "iris-demo"
SERVING = "/api/2.0/preview/mlflow/endpoints"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
        "allow_header_conformance",
    ]
)
MAX_EXAMPLES = 10  # per operation and phase: the module stays within minutes on a busy machine
# What may disrupt the runs after it, as a caller who may do anything: turning serving off or
# moving a model to another environment restarts its server (scoring it is 503 meanwhile, by
# design), and revoking may hit the callers' own tokens. These run last, on their own.
DISRUPTIVE = (
    rf"^{SERVING}/(enable|disable|update-settings)$|^/api/2\.0/modelhost/(users|tokens)/revoke$"
)


@dataclass
class Gateway:
    url: str
    spec: Path  # /openapi.json as the gateway serves it
    callers: dict[str, str | None]  # who -> token (None: no token), in the order they run
    selection: tuple[str, ...]  # `st run` options that pick the operations this gateway has

    @property
    def privileged(self) -> str:
        """The caller who may do anything: the last."""
        return list(self.callers)[-1]

    def paths(self) -> list[str]:
        """The path of each documented operation this gateway has (one method each)."""
        auth = "admin" in self.callers
        return [
            path
            for path, item in json.loads(self.spec.read_text())["paths"].items()
            for method, operation in item.items()
            if method in {"get", "post", "delete"} and (auth or "Auth" not in operation["tags"])
        ]


@pytest.fixture(scope="module", params=["open", "auth"])
def gateway(request, tmp_path_factory) -> Gateway:
    """`modelhost up`, open or with --auth; one at a time, each for its tests.

    The open one serves the demo model, so scoring is fuzzed through to a model server; the one
    with auth has no model (scoring is the same past the check of its READ grant) and starts
    sooner.
    """
    home = tmp_path_factory.mktemp(request.param) / "home"
    auth = request.param == "auth"
    platform = Platform(home, "--auth" if auth else "--demo")
    with pytest.MonkeyPatch.context() as env:  # only `up` needs to see it
        if auth:
            env.setenv("MODELHOST_ADMIN_TOKEN", ADMIN_TOKEN)
        platform.__enter__()
    try:
        spec = home.parent / "openapi.json"
        if auth:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            spec.write_bytes(httpx.get(f"{platform.url}/openapi.json", headers=admin).content)
            callers = {"nobody": _plain_user(platform.url, admin), "anonymous": None}
            callers["admin"] = ADMIN_TOKEN
            yield Gateway(platform.url, spec, callers, ())
        else:
            ready = eventually(lambda: _scored(platform.url), timeout_s=180)
            assert ready["predictions"] == [0]
            spec.write_bytes(httpx.get(f"{platform.url}/openapi.json").content)
            # Users, tokens and grants exist only with auth on: here every path of theirs is 404.
            yield Gateway(platform.url, spec, {"anyone": None}, ("--exclude-tag", "Auth"))
    finally:
        platform.__exit__()


def _scored(url: str) -> dict:
    answer = httpx.post(f"{url}/model/{MODEL}/1/invocations", json=ONE_ROW, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _plain_user(url: str, admin: dict[str, str]) -> str:
    """A user with no grants, made by the admin: its token."""
    api = f"{url}/api/2.0/modelhost"
    # Not a name the examples use, so no example revokes it.
    made = httpx.post(f"{api}/users/create", json={"name": "nobody"}, headers=admin, timeout=60)
    assert made.status_code == 200, made.text
    token = httpx.post(f"{api}/tokens/create", json={"user": "nobody"}, headers=admin, timeout=60)
    assert token.status_code == 200, token.text
    return token.json()["token"]


def fuzz(gateway: Gateway, token: str | None, out: Path, *selection: str) -> dict:
    """`st run` against the gateway as the holder of `token`; its JSON report."""
    report = out / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", str(gateway.spec),
        "--url", gateway.url, "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
        "--workers", "2", "--request-timeout", "60", "--no-color",
        # Stateful runs chain operations by the links schemathesis infers (list tokens, then
        # revoke them); the contract is each operation's own, and the time is better spent on it.
        "--phases", "examples,coverage,fuzzing",
        # No stored examples between runs (nothing is written in the work tree), and no
        # made-up credentials: each run is signed in as its caller, or not at all.
        "--generation-database", "none", "--generation-with-security-parameters", "false",
        "--report", "json", "--report-json-path", str(report), *gateway.selection, *selection,
    ]  # fmt: skip
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=600)
    assert report.exists(), done.stdout + done.stderr
    found = json.loads(report.read_text())
    assert done.returncode == 0, done.stdout[-20_000:]  # the failures, each with a curl line
    assert found["failures"] == [] and found["errors"] == [], done.stdout[-20_000:]
    return found


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/health", "GET, HEAD"),
        ("POST", "/openapi.json", "GET, HEAD"),
        ("GET", f"/model/{MODEL}/1/invocations", "POST"),
        ("DELETE", f"{SERVING}/list", "GET"),
        ("GET", f"{SERVING}/enable", "POST"),
        ("PUT", "/api/2.0/modelhost/users/create", "POST"),
    ],
)
def test_a_method_a_path_does_not_take_is_405_with_allow(gateway, method, path, allowed):
    if path.startswith("/api/2.0/modelhost/") and "admin" not in gateway.callers:
        # With auth off there is no auth API at all, whatever the method.
        assert httpx.request(method, gateway.url + path, json={}).status_code == 404
        return
    for who, token in gateway.callers.items():
        if token is None and path != "/health" and "admin" in gateway.callers:
            continue  # no token: 401 comes first, as for every method
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.request(method, gateway.url + path, headers=headers, json={}, timeout=60)
        assert answer.status_code == 405, f"{who}: {answer.text}"
        assert answer.headers["allow"] == allowed
        assert answer.json()["error_code"] == "BAD_REQUEST"
        assert method in answer.json()["message"] and allowed in answer.json()["message"]


def test_docs_show_every_documented_operation(gateway):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if "admin" in gateway.callers else {}
    page = httpx.get(f"{gateway.url}/docs", headers=headers, timeout=60)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for path, item in json.loads(gateway.spec.read_text())["paths"].items():
        for method in item:
            if method in {"get", "post", "delete"}:
                shown = f"{method.upper()}</span> <code>{path}</code>"
                assert shown in page.text, shown


def test_a_token_lifetime_past_a_century_is_refused(gateway):
    """It was stored as an infinite expiry: a 500, then every list of tokens was a 500."""
    api = f"{gateway.url}/api/2.0/modelhost"
    if "admin" not in gateway.callers:  # with auth off no token can be made at all
        assert httpx.post(f"{api}/tokens/create", json={"expires_in_days": 1}).status_code == 404
        return
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for days in (3e307, 36501, 0, True, "90"):
        made = httpx.post(f"{api}/tokens/create", json={"expires_in_days": days}, headers=admin)
        assert made.status_code == 400, made.text
        assert "expires_in_days" in made.json()["message"]
    made = httpx.post(f"{api}/tokens/create", json={"expires_in_days": 36500}, headers=admin)
    assert made.status_code == 200, made.text
    listed = httpx.get(f"{api}/tokens/list", headers=admin)
    assert listed.status_code == 200, listed.text
    assert made.json()["token_info"]["id"] in [t["id"] for t in listed.json()["tokens"]]


def test_a_name_the_registry_cannot_hold_is_400(gateway):
    """The registry's refusal was passed on as a 500."""
    token = gateway.callers[gateway.privileged]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for name in ("a/b", "a:b", "  "):
        answer = httpx.post(f"{gateway.url}{SERVING}/enable", headers=headers, timeout=60,
                            json={"registered_model_name": name})  # fmt: skip
        assert answer.status_code == 400, answer.text
        assert answer.json()["error_code"] == "BAD_REQUEST"
        assert "not a registered model's name" in answer.json()["message"]


# The runs below change what the tests above rely on (serving, tokens): they go last.


def test_every_operation_keeps_its_contract(gateway, tmp_path):
    """As each caller in turn; the last, who may do anything, leaves out what disrupts."""
    for who, token in gateway.callers.items():
        last = who == gateway.privileged
        out = tmp_path / who
        out.mkdir()
        found = fuzz(gateway, token, out, *(["--exclude-path-regex", DISRUPTIVE] if last else []))
        tested = found["operations"]["tested"]
        expected = [p for p in gateway.paths() if not (last and re.match(DISRUPTIVE, p))]
        assert tested == len(expected), (who, found)
        assert found["test_cases"]["generated"] > tested, found["test_cases"]


def test_what_disrupts_keeps_its_contract(gateway, tmp_path):
    """Last, as the caller who may do anything: it may stop the model server or revoke tokens."""
    token = gateway.callers[gateway.privileged]
    found = fuzz(gateway, token, tmp_path, "--include-path-regex", DISRUPTIVE)
    expected = [p for p in gateway.paths() if re.match(DISRUPTIVE, p)]
    assert found["operations"]["tested"] == len(expected) > 0, found
