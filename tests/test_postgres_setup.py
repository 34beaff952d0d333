"""The README's multi-node setup: nginx in front of identical nodes retries only what is safe.

A node that dies while it holds a request drops the connection without an answer. Scoring has
no side effects, so nginx sends it again to the next node and the client never sees the death;
a registry write may already have happened, so the client gets a 502 and decides.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from support import ONE_ROW, Nginx

SCORING = "/model/iris/1/invocations"
REGISTRY_WRITE = "/api/2.0/mlflow/registered-models/create"
ATTEMPTS = 20  # round robin reaches the dying node within two requests; this is a bound


class Node:
    """A stand-in for a modelhost node on loopback that records every request it reads.

    `dying`: it reads each request whole, then closes the connection without answering, as a
    node killed mid-request does.
    """

    def __init__(self, dying: bool) -> None:
        self.received: list[tuple[str, bytes]] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                node.received.append((self.path, body))
                if dying:
                    self.close_connection = True
                    return
                answer = json.dumps({"predictions": [0]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_) -> None:  # quiet: pytest shows the assertions
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node, Nginx]]:
    """A dying node and a healthy one behind nginx with the README's configuration."""
    dying, healthy = Node(dying=True), Node(dying=False)
    try:
        with Nginx([dying.port, healthy.port]) as nginx:
            yield dying, healthy, nginx
    finally:
        dying.close()
        healthy.close()


def bodies(path: str) -> Iterator[bytes]:
    for i in range(ATTEMPTS):
        yield json.dumps({**ONE_ROW, "name": f"{path}-{i}"}).encode()


def test_scoring_cut_off_by_a_dying_node_is_answered_by_the_next(nodes):
    dying, healthy, nginx = nodes
    for body in bodies(SCORING):
        answer = httpx.post(f"{nginx.url}{SCORING}", content=body, timeout=30)
        assert answer.status_code == 200, f"{answer.text}\n{nginx.log()}"
        assert answer.json() == {"predictions": [0]}
        if dying.received:
            break
    assert dying.received, f"no request reached the dying node in {ATTEMPTS}"
    # The very request the dying node dropped, body and all, was answered by the healthy one.
    assert dying.received[0] in healthy.received


def test_a_registry_write_cut_off_by_a_dying_node_is_not_sent_again(nodes):
    dying, healthy, nginx = nodes
    for body in bodies(REGISTRY_WRITE):
        answer = httpx.post(f"{nginx.url}{REGISTRY_WRITE}", content=body, timeout=30)
        if dying.received:
            break
        assert answer.status_code == 200, f"{answer.text}\n{nginx.log()}"
    assert dying.received, f"no request reached the dying node in {ATTEMPTS}"
    assert answer.status_code == 502
    assert dying.received[0] not in healthy.received, "the write was sent to a second node"
