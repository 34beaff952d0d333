"""The gateway reaches model server replicas over TCP with their secrets, spreads a model's
requests over them, and keeps answering when one is gone from the route."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from support import ONE_ROW, TcpWorker, eventually, free_port, tcp_model_worker

from modelhost.config import UpSettings
from modelhost.control.routes import (
    EndpointState,
    ModelRoutes,
    Replica,
    RouteBoard,
    RouteTable,
    ServerAddress,
    VersionRoute,
    VersionState,
    frozen,
)
from modelhost.control.serving import ServingControl
from modelhost.control.settings import ServingSettings
from modelhost.control.store import StateStore
from modelhost.gateway.app import Gateway
from modelhost.gateway.pool import ConnectionPool, UpstreamClosed
from modelhost.processes import stop_group

JSON = b"application/json"
SUM = {**ONE_ROW, "params": {"scale": 1.0}}  # scaled_sum answers the sum of the row


def replica(number: int, worker: TcpWorker) -> Replica:
    return Replica(number, host="127.0.0.1", port=worker.port, secret=worker.secret)


def table(**versions: tuple[Replica, ...]) -> RouteTable:
    """Model 'm' with each version ready on the replicas given."""
    routes = {
        version: VersionRoute(
            VersionState.READY, "Ready.", ServerAddress(number, replicas=replicas)
        )
        for number, (version, replicas) in enumerate(versions.items(), start=1)
    }
    return RouteTable(
        frozen({"m": ModelRoutes(EndpointState.READY, "Ready.", versions=frozen(routes))})
    )


@contextmanager
def holding(worker: TcpWorker, **versions: str) -> Iterator[TcpWorker]:
    """`worker`, once it holds each version (name -> model folder) ready."""
    with worker.client() as client:
        for name, model in versions.items():
            assert client.put(f"/versions/{name}", json={"model_uri": model}).status_code == 202

        def ready() -> None:
            states = {v["version"]: v["state"] for v in client.get("/versions").json()["versions"]}
            assert states == dict.fromkeys(versions, "READY"), states

        eventually(ready, timeout_s=120)
    yield worker


@pytest.fixture(scope="module")
def workers(log_dir, model_paths) -> Iterator[list[TcpWorker]]:
    """Two replicas of one model server on TCP, each holding scaled_sum (1) and sleeper (2)."""
    models = {"1": str(model_paths["scaled_sum"]), "2": str(model_paths["sleeper"])}
    with (
        tcp_model_worker(log_dir / "replica-1.log") as one,
        tcp_model_worker(log_dir / "replica-2.log") as two,
        holding(one, **models),
        holding(two, **models),
    ):
        yield [one, two]


class RunningGateway:
    """The gateway on a free port of 127.0.0.1, its routes published by the test."""

    def __init__(self, board: RouteBoard, server: uvicorn.Server, port: int) -> None:
        self.board = board
        self.server = server
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("gateway-home")
    board = RouteBoard()
    board.starting = False
    store = StateStore(f"sqlite:///{home / 'state.db'}")
    # Its registry is never asked: scoring and /metrics reach only the model servers.
    registry = "http://127.0.0.1:9"
    control = ServingControl(
        store, registry, ServingSettings(), board, lambda: None, lambda _: home
    )
    port = free_port()
    config = uvicorn.Config(
        Gateway(UpSettings(home=home), registry, control),
        host="127.0.0.1", port=port, lifespan="on", log_level="warning",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway")
    thread.start()
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{port}/openapi.json"), timeout_s=60)
        yield RunningGateway(board, server, port)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        store.engine.dispose()


def _answers(url: str) -> None:
    try:
        assert httpx.get(url, timeout=10).status_code == 200
    except httpx.TransportError:
        raise AssertionError("not answering yet") from None


def served(worker: TcpWorker) -> float:
    """Scoring requests this replica has answered 200 (its own /metrics)."""
    with worker.client() as client:
        text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "modelhost_requests":
            return sum(s.value for s in family.samples if s.labels == {"status": "200"})
    return 0.0


def gateway_rows(gateway: RunningGateway, version: str) -> list[float]:
    """What the gateway's /metrics shows of rows predicted for m's `version`: one per sample."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "modelhost_batch_rows"
        for sample in family.samples
        if sample.name == "modelhost_batch_rows_sum"
        and sample.labels == {"model_name": "m", "model_version": version}
    ]


def test_the_pool_scores_over_tcp_with_the_secret_and_says_nothing_of_it(workers):
    one = workers[0]

    async def scenario() -> None:
        pool = ConnectionPool(replica(101, one))
        stranger = ConnectionPool(Replica(102, host="127.0.0.1", port=one.port, secret="wrong"))
        try:
            answer = await pool.score("1", JSON, orjson.dumps(SUM), 30)
            assert answer.status == 200, answer.body
            assert orjson.loads(answer.body) == {"predictions": [pytest.approx(10.2)]}
            assert pool.in_flight == 0
            refused = await stranger.score("1", JSON, orjson.dumps(SUM), 30)
            assert refused.status == 401
            assert orjson.loads(refused.body)["error_code"] == "UNAUTHENTICATED"
        finally:
            pool.close()
            stranger.close()

        closed = free_port()  # nothing listens there
        away = ConnectionPool(Replica(103, host="127.0.0.1", port=closed, secret=one.secret))
        with pytest.raises(UpstreamClosed) as failed:
            await away.score("1", JSON, orjson.dumps(SUM), 30)
        assert f"127.0.0.1:{closed}" in str(failed.value)
        assert one.secret not in str(failed.value)
        assert away.in_flight == 0

    asyncio.run(scenario())


def test_the_gateway_spreads_a_models_requests_over_its_replicas(gateway, workers):
    one, two = workers
    gateway.board.publish(table(**{"1": (replica(1, one), replica(2, two)), "2": ()}))
    before = [served(one), served(two)]
    rows_before = sum(gateway_rows(gateway, "1"))
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for _ in range(20):
            answer = client.post("/model/m/1/invocations", json=SUM)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"predictions": [pytest.approx(10.2)]}
    after = [served(one), served(two)]
    got = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(got) == 20
    assert all(n > 0 for n in got), got  # idle replicas share the load
    # /metrics sums what every replica counted: one series per version, all 20 rows in it.
    assert len(gateway_rows(gateway, "1")) == 1
    assert sum(gateway_rows(gateway, "1")) - rows_before == 20


def test_a_busy_replica_is_passed_over_and_requests_in_flight_are_counted(gateway, workers):
    one, two = workers
    gateway.board.publish(
        table(**{"1": (replica(1, one),), "2": tuple(map(replica, (1, 2), workers))})
    )
    before = [served(one), served(two)]
    # Long enough that the second request comes while the first is still being answered.
    slow = {"dataframe_records": [{"seconds": 6.0}]}
    answers: list[httpx.Response] = []

    def call() -> None:
        answers.append(httpx.post(f"{gateway.url}/model/m/2/invocations", json=slow, timeout=60))

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()

    def both_in_flight() -> None:
        assert gateway.board.in_flight.get("m") == 2

    eventually(both_in_flight, timeout_s=30)
    for caller in callers:
        caller.join(timeout=60)
    assert [a.status_code for a in answers] == [200, 200]
    assert gateway.board.in_flight["m"] == 0
    # The second went to the replica that was not busy with the first.
    assert [served(one) - before[0], served(two) - before[1]] == [1, 1]


def test_a_route_without_a_killed_replica_answers_from_the_others(
    gateway, workers, log_dir, model_paths
):
    one = workers[0]
    models = {"1": str(model_paths["scaled_sum"])}
    with tcp_model_worker(log_dir / "replica-3.log") as three, holding(three, **models):
        gateway.board.publish(table(**{"1": (replica(1, one), replica(3, three))}))
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            for _ in range(4):  # both hold connections to it
                assert client.post("/model/m/1/invocations", json=SUM).status_code == 200
            assert served(three) > 0
            stop_group(three.process, 0)  # killed, not drained
            # The controller drops the dead replica from the route.
            gateway.board.publish(table(**{"1": (replica(1, one),)}))
            for _ in range(10):
                answer = client.post("/model/m/1/invocations", json=SUM)
                assert answer.status_code == 200, answer.text
            # Its pool was closed, the other's kept.
            assert client.get("/metrics").status_code == 200
