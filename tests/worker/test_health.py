"""A model server's /health: which versions it holds and whether each ready one can answer."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow.models import infer_signature
from support import Server, eventually, model_worker

TOYS = Path(__file__).parents[1] / "toys"
# Declared, so MLflow does not load each model in a subprocess to infer them.
REQUIREMENTS = ["mlflow", "pandas"]
HOLD = {"dataframe_records": [{"hold": True}]}


def x_row(value: float) -> dict:
    return {"dataframe_split": {"columns": ["x"], "data": [[value]]}}


def save_gated(root: Path) -> tuple[Path, Path]:
    """The gated toy saved under `root`, and the folder of its gates (closed)."""
    gates = root / "gates"
    gates.mkdir()
    mlflow.pyfunc.save_model(
        root / "model", python_model=str(TOYS / "gated.py"), model_config={"gates": str(gates)},
        signature=infer_signature(pd.DataFrame({"hold": [False]})),
        pip_requirements=REQUIREMENTS,
    )  # fmt: skip
    return root / "model", gates


@pytest.fixture(scope="module")
def escaping_failure(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("escaping") / "model"
    mlflow.pyfunc.save_model(
        path, python_model=str(TOYS / "escaping_failure.py"), pip_requirements=REQUIREMENTS,
        signature=infer_signature(pd.DataFrame({"x": [1.0]}), pd.Series([1.0])),
    )  # fmt: skip
    return path


def states(answer: httpx.Response) -> dict[str, str]:
    return {version["version"]: version["state"] for version in answer.json()["versions"]}


@pytest.fixture
def gated_server(tmp_path, log_dir) -> Iterator[tuple[Server, Path, Path]]:
    """`modelhost serve` of the gated toy, its load gate open."""
    model, gates = save_gated(tmp_path)
    (gates / "load").touch()
    server = Server(model, log_dir=log_dir).start()
    try:
        yield server.wait_ready(), model, gates
    finally:
        (gates / "predict").touch()  # nothing stays held
        server.stop()


def test_serve_answers_health_with_its_model_even_while_it_predicts(gated_server):
    server, model, gates = gated_server
    health = httpx.get(f"{server.url}/health", timeout=30)
    assert health.status_code == 200
    held_model = {"version": "model", "model_uri": str(model), "state": "READY"}
    assert health.json() == {"status": "READY", "versions": [{**held_model, "message": "Ready."}]}

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(server.invoke, HOLD)
        eventually(lambda: _exists(gates / "predicting"))
        # The model is busy on its thread until the gate opens: /health must not wait for it.
        during = httpx.get(f"{server.url}/health", timeout=30)
        (gates / "predict").touch()
        assert held.result(timeout=90).json() == {"predictions": [True]}
    assert during.status_code == 200
    assert during.json()["status"] == "READY"


def _exists(path: Path) -> None:
    assert path.exists(), f"{path} not there yet"


@pytest.fixture(scope="module")
def worker(log_dir) -> Iterator[httpx.Client]:
    with model_worker(log_dir / "health-worker.log") as (client, _):
        yield client


def test_health_lists_versions_loading_ready_and_failed(worker, tmp_path):
    model, gates = save_gated(tmp_path)
    assert worker.put("/versions/1", json={"model_uri": str(model)}).status_code == 202
    loading = worker.get("/health")
    assert loading.status_code == 200
    assert loading.json() == {
        "status": "READY",
        "versions": [
            {"version": "1", "model_uri": str(model), "state": "LOADING",
             "message": "Loading the model."},
        ],
    }  # fmt: skip

    worker.put("/versions/2", json={"model_uri": "/no/such/model"})
    failed = eventually(lambda: _in_state(worker, "2", "FAILED"))
    assert failed.status_code == 200  # a version that failed to load says so in its state
    assert failed.json()["status"] == "READY"
    assert "no/such/model" in failed.json()["versions"][1]["message"]

    (gates / "load").touch()
    ready = eventually(lambda: _in_state(worker, "1", "READY"))
    assert ready.status_code == 200
    assert states(ready) == {"1": "READY", "2": "FAILED"}
    # One call tells health and what is held: the same list as GET /versions.
    assert ready.json()["versions"] == worker.get("/versions").json()["versions"]


def _in_state(client: httpx.Client, version: str, state: str) -> httpx.Response:
    health = client.get("/health")
    assert states(health).get(version) == state, health.text
    return health


def test_a_stopped_batcher_makes_health_503_and_the_server_serves_on(escaping_failure, log_dir):
    log_path = log_dir / "health-stopped-batcher.log"
    with model_worker(log_path, "--timeout", "5") as (client, process):
        for version in ("1", "2"):
            client.put(f"/versions/{version}", json={"model_uri": str(escaping_failure)})
        for version in ("1", "2"):
            eventually(lambda version=version: _in_state(client, version, "READY"))
        assert client.post("/versions/1/invocations", json=x_row(1.0)).json() == {
            "predictions": [2.0]
        }

        # The model's failure escapes `except Exception` and ends version 1's batcher; the
        # request it was answering is never answered, so its deadline ends it.
        assert client.post("/versions/1/invocations", json=x_row(-1.0)).status_code == 504

        health = client.get("/health")
        assert health.status_code == 503
        assert health.headers["retry-after"] == "1"
        body = health.json()
        assert body["status"] == "UNHEALTHY"
        assert "version 1 stopped" in body["message"]
        assert "Deadline: the model's own deadline fired" in body["message"]
        assert states(health) == {"1": "READY", "2": "READY"}

        refused = client.post("/versions/1/invocations", json=x_row(1.0))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "version 1 stopped" in refused.json()["message"]
        # The process lives on and its other version still answers.
        assert client.post("/versions/2/invocations", json=x_row(1.0)).json() == {
            "predictions": [2.0]
        }
        assert client.get("/ping").status_code == 200
        assert process.poll() is None
    assert "The batcher of version 1 stopped (Deadline" in log_path.read_text()
