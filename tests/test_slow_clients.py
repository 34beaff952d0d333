"""Slow and bloated clients cost only themselves: the admin's registry calls and scoring go on.

One `modelhost up --auth` for the module, with short limits. Hundreds of connections send one
byte of a registry request's body, or never finish their headers, from other loopback addresses
(all of 127/8 is loopback, and a client picks its source address): they are answered 408 and
closed once their time is up, each logged as one line, while the admin is served meanwhile.
"""

from __future__ import annotations

import os
import resource
import secrets
import socket
import time
import uuid

import httpx
import mlflow
import pytest
from sklearn.linear_model import LogisticRegression
from support import ONE_ROW, Platform, eventually

ADMIN_TOKEN = secrets.token_urlsafe(32)
# --header-timeout and --body-timeout: time enough to see the admin served (well under a
# second, even on a busy machine), and what the tests that outlast it wait for.
TIMEOUT_S = 15
PER_CLIENT = 20  # --registry-requests-per-client
BOUND_S = 10  # each of the admin's calls is answered within this: a bound, not a measure
MODEL = "slow.iris"
MODELS = "/api/2.0/mlflow/registered-models"
ENDPOINTS = "/api/2.0/preview/mlflow/endpoints"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, iris):
    # Hundreds of sockets on each side; the platform inherits the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(4096, hard)), hard))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELHOST_ADMIN_TOKEN", ADMIN_TOKEN)
        platform = Platform(
            tmp_path_factory.mktemp("slow") / "home", "--auth",
            "--header-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S),
            "--registry-requests-per-client", str(PER_CLIENT),
        )  # fmt: skip
        platform.__enter__()
    try:
        _serve_a_model(platform, iris)
        yield platform
    finally:
        platform.__exit__()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _serve_a_model(platform: Platform, iris) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_TOKEN", ADMIN_TOKEN)
        mlflow.set_tracking_uri(platform.url)
        try:
            mlflow.set_experiment("slow clients")  # not one another module's platform made
            with mlflow.start_run():
                mlflow.sklearn.log_model(
                    LogisticRegression(max_iter=1000).fit(iris, [0, 1, 2] * 50), name="model",
                    registered_model_name=MODEL, pip_requirements=["mlflow", "scikit-learn"],
                )  # fmt: skip
        finally:
            mlflow.set_tracking_uri(None)
    with admin(platform) as client:
        enabled = client.post(f"{ENDPOINTS}/enable", json={"registered_model_name": MODEL})
    assert enabled.status_code == 200, enabled.text
    eventually(lambda: _scores(platform), timeout_s=300)


def admin(platform: Platform) -> httpx.Client:
    return httpx.Client(
        base_url=platform.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=BOUND_S
    )


def _scores(platform: Platform) -> None:
    with admin(platform) as client:
        answer = client.post(f"/model/{MODEL}/1/invocations", json=ONE_ROW)
    assert answer.status_code == 200, answer.text


def the_admin_is_served(platform: Platform, name: str) -> None:
    """A create, a read, a search and a delete of a registered model, and a prediction."""
    with admin(platform) as client:
        assert client.post(f"{MODELS}/create", json={"name": name}).status_code == 200
        read = client.get(f"{MODELS}/get", params={"name": name})
        assert read.json()["registered_model"]["name"] == name
        found = client.get(f"{MODELS}/search", params={"filter": f"name='{name}'"})
        assert [m["name"] for m in found.json()["registered_models"]] == [name]
        assert client.request("DELETE", f"{MODELS}/delete", json={"name": name}).is_success
        scored = client.post(f"/model/{MODEL}/1/invocations", json=ONE_ROW)
        assert scored.status_code == 200, scored.text


def connect(platform: Platform, source: str) -> socket.socket:
    connection = socket.socket()
    connection.bind((source, 0))
    connection.connect(("127.0.0.1", platform.port))
    return connection


def one_byte_of_body(platform: Platform, source: str) -> socket.socket:
    """A registry call with the admin's token that sends 1 of its 100 bytes of body."""
    connection = connect(platform, source)
    connection.sendall(
        f"POST {MODELS}/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    return connection


def one_byte_of_upload(platform: Platform, source: str) -> socket.socket:
    """An artifact upload with the admin's token that sends 1 of its 2 MiB: too large to be
    held whole first, it takes a connection to the registry as it streams."""
    connection = connect(platform, source)
    connection.sendall(
        f"PUT /api/2.0/mlflow-artifacts/artifacts/0/held/{uuid.uuid4().hex} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Length: {2 << 20}\r\n\r\nx".encode()
    )
    return connection


def unfinished_headers(platform: Platform, source: str) -> socket.socket:
    connection = connect(platform, source)
    connection.sendall(f"GET {MODELS}/search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
    return connection


def answered(connection: socket.socket) -> bool:
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return False


def answer_and_close(connection: socket.socket) -> bytes:
    """All the gateway sends, up to its closing the connection."""
    connection.settimeout(TIMEOUT_S + 90)
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def log_lines_of(platform: Platform, connection_address: tuple[str, int]) -> list[str]:
    host, port = connection_address
    marker = f" {host}:{port} "
    return [line for line in platform.log_path.read_text().splitlines() if marker in line]


def test_slow_clients_wait_alone_then_get_408(platform):
    # 300 one-byte bodies from 30 addresses (each within its share), 20 unfinished heads.
    slow = [one_byte_of_body(platform, f"127.0.1.{1 + i % 30}") for i in range(300)]
    slow += [unfinished_headers(platform, "127.0.2.1") for _ in range(20)]
    addresses = [connection.getsockname() for connection in slow]
    try:
        the_admin_is_served(platform, "served-meanwhile")
        assert [c for c in slow if answered(c)] == [], "slow clients are not cut off early"

        for connection in slow:
            answer = answer_and_close(connection)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"error_code":"DEADLINE_EXCEEDED"' in answer
            assert b"connection: close" in answer.lower()
    finally:
        for connection in slow:
            connection.close()

    def one_line_each() -> None:
        for address in addresses:
            lines = log_lines_of(platform, address)
            assert len(lines) == 1 and "answered 408 and closed" in lines[0], (address, lines)

    eventually(one_line_each, timeout_s=30)
    assert "Traceback" not in platform.log_path.read_text()
    the_admin_is_served(platform, "served-after")


def test_one_address_holds_only_its_share_of_registry_requests(platform):
    held = [one_byte_of_upload(platform, "127.0.3.1") for _ in range(PER_CLIENT + 5)]
    addresses = [connection.getsockname() for connection in held]
    try:

        def five_refused() -> None:
            assert len([c for c in held if answered(c)]) == 5

        eventually(five_refused, timeout_s=TIMEOUT_S - 5)  # before any is cut off
        for connection in [c for c in held if answered(c)]:
            head = connection.recv(65536)
            assert head.startswith(b"HTTP/1.1 429 "), head[:200]
            assert b'"error_code":"REQUEST_LIMIT_EXCEEDED"' in head
            assert b"retry-after: 1" in head.lower()
        the_admin_is_served(platform, "served-beside-a-greedy-address")
    finally:
        for connection in held:
            connection.close()  # every one of them abandons its request

    def one_line_each() -> None:
        for address in addresses:
            lines = log_lines_of(platform, address)
            assert len(lines) == 1 and "went away before" in lines[0], (address, lines)

    eventually(one_line_each, timeout_s=30)
    assert "Traceback" not in platform.log_path.read_text()


def test_clients_that_abandon_a_registry_upload_cost_one_log_line(platform):
    # Bodies too large to be held whole: these stream to the registry as they arrive.
    addresses = []
    for _ in range(10):
        connection = connect(platform, "127.0.4.1")
        connection.sendall(
            "PUT /api/2.0/mlflow-artifacts/artifacts/0/abandoned/model.pkl HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            "Content-Length: 50000000\r\n\r\n".encode()
            + os.urandom(100_000)
        )
        addresses.append(connection.getsockname())
        connection.close()

    def one_line_each() -> None:
        for address in addresses:
            lines = log_lines_of(platform, address)
            assert len(lines) == 1 and "went away before" in lines[0], (address, lines)

    eventually(one_line_each, timeout_s=60)
    assert "Traceback" not in platform.log_path.read_text()
    the_admin_is_served(platform, "served-after-abandoned-uploads")


@pytest.mark.parametrize(
    "headers",
    [{"X-Large": "a" * 100_000}, {f"X-Field-{i}": "1" for i in range(200)}],
    ids=["100 KB header", "200 headers"],
)
def test_bloated_headers_get_431(platform, headers):
    answer = httpx.get(f"{platform.url}{MODELS}/search", headers=headers, timeout=60)
    assert answer.status_code == 431, answer.text
    assert answer.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "headers" in answer.json()["message"]


def test_a_large_upload_sent_steadily_outlasts_the_body_timeout(platform):
    """The body's time grows with what arrives: a slow link's artifact upload gets through."""
    piece = os.urandom(256 * 1024)  # 4 of the 64 KiB that each buy a second

    pieces = TIMEOUT_S + 10

    def steadily():
        for _ in range(pieces):
            yield piece
            time.sleep(1)

    path = "/api/2.0/mlflow-artifacts/artifacts/0/steady/blob.bin"
    size = {"Content-Length": str(pieces * len(piece))}  # uploads say their size
    with admin(platform) as client:
        sent = client.put(path, content=steadily(), headers=size, timeout=TIMEOUT_S * 3)
        assert sent.status_code == 200, sent.text
        read = client.get(path, timeout=TIMEOUT_S * 3)
    assert read.status_code == 200 and len(read.content) > TIMEOUT_S * len(piece)
