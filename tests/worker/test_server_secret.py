"""A model server on a cluster node listens on TCP: it answers only requests that carry its
secret, and model code never finds that secret in its environment."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow.models import infer_signature
from support import eventually, tcp_model_worker

SEEKER = Path(__file__).parents[1] / "toys" / "secret_seeker.py"
ROW = {"dataframe_records": [{"x": 1.0}]}


@pytest.fixture(scope="module")
def seeker(tmp_path_factory) -> Path:
    """A pyfunc that answers with MODELHOST_SERVER_SECRET as its environment holds it."""
    path = tmp_path_factory.mktemp("models") / "secret_seeker"
    mlflow.pyfunc.save_model(
        path,
        python_model=str(SEEKER),
        pip_requirements=["mlflow", "pandas"],
        signature=infer_signature(pd.DataFrame({"x": [1.0]}), ["found"]),
    )
    return path


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-processes"])
def worker(request, log_dir, seeker):
    """A TCP model server holding the secret seeker as version 1, with one or two processes."""
    workers = request.param
    log = log_dir / f"secret-{workers}.log"
    with tcp_model_worker(log, "--workers", str(workers)) as worker, worker.client() as client:
        assert client.put("/versions/1", json={"model_uri": str(seeker)}).status_code == 202

        def ready() -> None:  # in every process (/health says so once they all hold it)
            versions = client.get("/health").json()["versions"]
            assert [v["state"] for v in versions] == ["READY"], versions

        eventually(ready, timeout_s=120)
        yield worker


def test_requests_with_the_secret_are_answered_and_model_code_cannot_read_it(worker):
    with worker.client() as client:
        for _ in range(10):  # whichever process answers
            answer = client.post("/versions/1/invocations", json=ROW, headers=_fresh())
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"predictions": ["none"]}
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["versions"][0]["state"] == "READY"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer", "Basic {secret}", "{secret}", "Bearer {secret}x"],
    ids=["none", "wrong", "empty", "basic", "bare", "longer"],
)
def test_requests_without_the_secret_are_refused_whatever_they_ask(worker, authorization):
    headers = _fresh()
    if authorization is not None:
        headers["authorization"] = authorization.format(secret=worker.secret)
    with worker.client(secret="") as client:
        # Several fresh connections, so every worker process is asked.
        for _ in range(6):
            for method, path, body in [
                ("POST", "/versions/1/invocations", ROW),
                ("PUT", "/versions/2", {"model_uri": "/elsewhere"}),
                ("DELETE", "/versions/1", None),
                ("GET", "/health", None),
                ("GET", "/metrics", None),
            ]:
                refused = client.request(method, path, json=body, headers=headers)
                assert refused.status_code == 401, (method, path, refused.text)
                error = refused.json()
                assert error["error_code"] == "UNAUTHENTICATED"
                assert "answers only the modelhost gateway" in error["message"]
                assert worker.secret not in refused.text
    with worker.client() as client:  # nothing it was asked happened
        assert [v["version"] for v in client.get("/versions").json()["versions"]] == ["1"]


def test_the_secret_is_on_no_command_line_and_in_no_worker_process_environment(worker):
    pids = _group(worker.process.pid)
    assert len(pids) >= 1
    for pid in pids:
        assert worker.secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for pid in pids - {worker.process.pid}:  # the processes that run model code, with two
        assert worker.secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()


def _fresh() -> dict[str, str]:
    """Headers that make the server close the connection, so the next request opens another."""
    return {"connection": "close", "x-request": uuid.uuid4().hex}


def _group(leader: int) -> set[int]:
    """The live processes of the process group `leader` started."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == leader and fields[0] != "Z":  # its process group
            found.add(int(proc.name))
    return found


def test_a_client_without_the_secret_learns_nothing_of_the_server(worker):
    with httpx.Client(base_url=f"http://127.0.0.1:{worker.port}", timeout=30) as client:
        answer = client.get("/versions")
        assert answer.status_code == 401
        assert "versions" not in answer.json()
