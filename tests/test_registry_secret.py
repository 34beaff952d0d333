"""The embedded registry answers only the gateway: on its own port, no secret, no registry.

An attacker on the machine finds the registry's port in the process list and calls MLflow's API
on it, with no token and with the admin's modelhost token: refused. The same calls through the
gateway with the admin's token work, and so do MLflow's client and its artifact uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import mlflow
import pytest
from sklearn.linear_model import LogisticRegression
from support import Platform, signed_in_as

from modelhost.gateway.proxy import Upstream

ADMIN_TOKEN = secrets.token_urlsafe(32)
MODELS = "/api/2.0/mlflow/registered-models"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELHOST_ADMIN_TOKEN", ADMIN_TOKEN)
        platform = Platform(tmp_path_factory.mktemp("secret") / "home", "--auth")
        platform.__enter__()
    try:
        yield platform
    finally:
        platform.__exit__()


def registry_process(platform: Platform) -> tuple[int, int]:
    """The pid and port of the registry's server, as anyone can read them from the process list."""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if platform.marker.encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"uvicorn" in command:  # the server `mlflow server` starts
                return int(proc.name), int(command[command.index(b"--port") + 1])
    raise AssertionError("no registry server among the platform's processes")


def admin(method: str, url: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, url, headers=headers, timeout=60, **kwargs)


def test_the_registry_port_refuses_calls_without_the_secret(platform):
    _, port = registry_process(platform)
    registry = f"http://127.0.0.1:{port}"
    # A model that exists, so a refused read or delete is not just a missing one.
    assert admin("POST", f"{platform.url}{MODELS}/create", json={"name": "kept"}).is_success

    for credentials in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, {"Authorization": "x"}):
        calls = [
            ("POST", f"{MODELS}/create", {"json": {"name": "sneaked-in"}}),
            ("GET", f"{MODELS}/get", {"params": {"name": "kept"}}),
            ("GET", f"{MODELS}/search", {}),
            ("DELETE", f"{MODELS}/delete", {"json": {"name": "kept"}}),
        ]
        for method, path, kwargs in calls:
            answer = httpx.request(
                method, registry + path, headers=credentials, timeout=60, **kwargs
            )
            assert answer.status_code == 401, (method, path, credentials, answer.text)
            assert answer.json()["error_code"] == "UNAUTHENTICATED"
            assert "through modelhost's gateway" in answer.json()["message"]

    # Nothing of that happened: the kept model is there, the sneaked-in one is not.
    names = [
        m["name"]
        for m in admin("GET", f"{platform.url}{MODELS}/search").json()["registered_models"]
    ]
    assert names == ["kept"]
    assert httpx.get(f"{registry}/health", timeout=60).status_code == 200  # reveals nothing


def test_the_gateway_reaches_the_registry_with_the_admins_token(platform):
    url = platform.url
    made = admin("POST", f"{url}{MODELS}/create", json={"name": "through-the-gateway"})
    assert made.status_code == 200, made.text
    read = admin("GET", f"{url}{MODELS}/get", params={"name": "through-the-gateway"})
    assert read.json()["registered_model"]["name"] == "through-the-gateway"
    found = admin("GET", f"{url}{MODELS}/search", params={"filter": "name='through-the-gateway'"})
    assert [m["name"] for m in found.json()["registered_models"]] == ["through-the-gateway"]
    gone = admin("DELETE", f"{url}{MODELS}/delete", json={"name": "through-the-gateway"})
    assert gone.status_code == 200, gone.text
    missing = admin("GET", f"{url}{MODELS}/get", params={"name": "through-the-gateway"})
    assert missing.status_code == 404


def test_the_registry_port_bounds_slow_and_bloated_heads(platform):
    _, port = registry_process(platform)
    # Headers that never end: answered 408 and closed once --header-timeout (10 s) is up.
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(f"GET {MODELS}/search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        connection.settimeout(120)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    bloated = httpx.get(
        f"http://127.0.0.1:{port}{MODELS}/search", headers={"X-Large": "a" * 100_000}, timeout=60
    )
    assert bloated.status_code == 431, bloated.text


def test_mlflows_client_logs_and_reads_artifacts_through_the_gateway(platform, iris, tmp_path):
    with signed_in_as(platform.url, ADMIN_TOKEN) as client:
        mlflow.set_experiment("registry secret")  # not one another module's platform made
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                LogisticRegression(max_iter=1000).fit(iris, [0, 1, 2] * 50), name="model",
                registered_model_name="logged", pip_requirements=["scikit-learn"],
            )  # fmt: skip
        assert client.get_model_version("logged", "1").status == "READY"
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path))
        assert (Path(local) / "MLmodel").is_file()


def test_the_secret_is_only_in_memory(platform):
    pid, port = registry_process(platform)
    environ = dict(
        entry.split(b"=", 1) for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"=" in entry
    )  # fmt: skip
    secret = environ[b"_MODELHOST_REGISTRY_SECRET"]
    assert len(secret) >= 32
    assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # Never logged, never written under the home.
    written = [platform.log_path, *(p for p in platform.home.rglob("*") if p.is_file())]
    assert [p for p in written if secret in p.read_bytes()] == []
    # It is what opens the registry: with it, the same search is answered.
    answer = httpx.get(
        f"http://127.0.0.1:{port}{MODELS}/search",
        headers={"Authorization": b"Bearer " + secret}, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with the headers it came with."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps([[k.lower(), v] for k, v in self.headers.items()]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_) -> None:
        pass


@pytest.fixture
def echo():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def forwarded_headers(upstream: Upstream) -> dict[str, str]:
    """The headers a caller's registry call reaches the upstream with."""
    scope = {
        "type": "http", "method": "POST", "path": f"{MODELS}/create",
        "raw_path": f"{MODELS}/create".encode(), "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"authorization", b"Bearer mh_the-callers-token"), (b"cookie", b"session=abc"),
            (b"proxy-authorization", b"Basic eDp5"), (b"content-type", b"application/json"),
            (b"content-length", b"2"),
        ],
    }  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        try:
            await upstream.forward(scope, receive, send)
        finally:
            await upstream.close()

    asyncio.run(run())
    assert sent[0]["status"] == 200
    return dict(json.loads(b"".join(m.get("body", b"") for m in sent[1:])))


def test_the_callers_credentials_never_reach_the_embedded_registry(echo):
    headers = forwarded_headers(Upstream(echo, bearer="the-registry-secret"))
    assert headers["authorization"] == "Bearer the-registry-secret"
    assert "cookie" not in headers and "proxy-authorization" not in headers
    assert headers["content-type"] == "application/json"
    # An external registry (--registry-uri http://...) judges the caller's own Authorization;
    # cookies are the gateway's (a browser's session with it) and never leave it.
    external = forwarded_headers(Upstream(echo))
    assert external["authorization"] == "Bearer mh_the-callers-token"
    assert "cookie" not in external
    assert "proxy-authorization" not in external  # hop-by-hop, never forwarded


def test_the_registry_secret_is_new_at_each_start(tmp_path):
    from modelhost.registry.embedded import EmbeddedRegistry

    first, second = EmbeddedRegistry(tmp_path), EmbeddedRegistry(tmp_path)
    assert first.secret != second.secret
    assert re.fullmatch(r"[\w-]{32,}", first.secret)
