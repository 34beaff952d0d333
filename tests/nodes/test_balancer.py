"""nginx in front of two identical nodes, as the README configures it, under steady scoring
load while one node is killed with SIGKILL and started again.

Counted: every request through nginx. None may fail but those in flight on the killed node at
the moment it died (nginx sends a scoring request cut off by a dying node on to the other, so
those do not fail either); the test prints how many those were. The node started again catches
up by itself and takes its share of the load again.
"""

from __future__ import annotations

import signal
import time

import httpx
import mlflow
import pytest
from support import ONE_ROW, Load, Nginx, Platform, eventually, log_iris

MODEL = "balanced"
SERVING = "/api/2.0/mlflow/endpoints"


@pytest.fixture(scope="module")
def pair(postgres, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("shared-artifacts")
    shared = [
        "--state-uri", postgres.database("balanced_state"),
        "--registry-uri", postgres.database("balanced_registry"),
        "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    a = Platform(tmp_path_factory.mktemp("a") / "home", *shared, "--node-name", "a")
    b = Platform(tmp_path_factory.mktemp("b") / "home", *shared, "--node-name", "b")
    with a, b:
        yield a, b


def test_a_node_killed_under_load_costs_no_request(pair, iris):
    a, b = pair
    mlflow.set_tracking_uri(a.url)
    try:
        mlflow.set_experiment("balanced")
        log_iris(iris, MODEL)
    finally:
        mlflow.set_tracking_uri(None)
    enabled = httpx.post(f"{b.url}{SERVING}/enable", json={"registered_model_name": MODEL})
    assert enabled.status_code == 200, enabled.text
    for node in pair:
        eventually(lambda node=node: _scores(node.url), 120)

    with Nginx([a.port, b.port]) as nginx:
        url = f"http://127.0.0.1:{nginx.port}/model/{MODEL}/1/invocations"
        with Load({"nginx": url}, clients=8, pause_s=0.002) as load:
            load.phase = "both nodes"
            time.sleep(3)
            load.phase = "b killed"
            killed_at = time.monotonic()
            b.process.send_signal(signal.SIGKILL)
            b.process.wait(timeout=30)
            time.sleep(4)
            load.phase = "b starting again"
            b.start()  # the same home and port: it catches up with no step of ours
            eventually(lambda: _scores(b.url), 120)
            served_by_b = _requests_seen(b.url)
            load.phase = "b back"
            time.sleep(4)
        print(f"\n{load.summary()}")
        assert _requests_seen(b.url) > served_by_b, "nginx sends b its share again"
        print(nginx.log()[-2000:])

    outcomes = load.outcomes
    in_flight = [o for o in outcomes if o.started < killed_at < o.ended]
    failed = [o for o in outcomes if o.status != 200]
    print(
        f"{len(outcomes)} requests through nginx; {len(in_flight)} in flight when b was killed "
        f"(each to a or b); {len(failed)} failed"
    )
    assert len(outcomes) > 100
    # Nothing failed that started after the kill, and no more than were in flight then.
    assert [o for o in failed if o.started >= killed_at] == [], failed[:5]
    assert len(failed) <= len(in_flight), failed[:5]
    for phase in ("both nodes", "b killed", "b starting again", "b back"):
        assert any(o.status == 200 for o in load.of("nginx", phase)), load.summary()


def _scores(url: str) -> None:
    answer = httpx.post(f"{url}/model/{MODEL}/1/invocations", json=ONE_ROW, timeout=30)
    assert answer.status_code == 200, answer.text


def _requests_seen(url: str) -> float:
    """The scoring requests of MODEL this node answered, from its /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("modelhost_gateway_requests_total{") and f'"{MODEL}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
