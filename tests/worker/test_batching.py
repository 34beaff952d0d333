"""Concurrent requests are combined into one predict call, and each still gets its own answer."""

from __future__ import annotations

import http.client
import json
import socket
import time

import httpx
import mlflow
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import Server, burst, mlflow_json, sample


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@pytest.mark.parametrize("model", ["classifier", "forest_regressor"])
def test_concurrent_answers_equal_unbatched_predictions(servers, model_paths, iris, model):
    server = servers[model]
    frames = [sample(iris, rows=1 + i % 5, seed=i) for i in range(240)]
    local = mlflow.pyfunc.load_model(str(model_paths[model]))
    expected = [{"predictions": mlflow_json(local.predict(frame))} for frame in frames]
    calls_before = metric(server, "modelhost_batch_rows_count")

    bodies = [{"dataframe_split": frame.to_dict(orient="split")} for frame in frames]
    bodies[::2] = [{"dataframe_records": f.to_dict("records")} for f in frames[::2]]
    responses = burst(server, bodies)

    assert [r.status_code for r in responses] == [200] * len(frames)
    assert [r.json() for r in responses] == expected
    calls = metric(server, "modelhost_batch_rows_count") - calls_before
    assert calls < len(frames) / 2, f"{calls} predict calls for {len(frames)} requests"


def test_a_failing_request_fails_alone_in_a_batch(servers):
    xs = [float(i % 7) - (3.0 if i % 10 == 0 else 0.0) for i in range(120)]
    xs[5::17] = [13.0] * len(xs[5::17])  # predictions JSON cannot hold
    bodies = [{"dataframe_split": {"columns": ["x"], "data": [[x]]}} for x in xs]
    responses = burst(servers["fragile"], bodies)
    for x, response in zip(xs, responses, strict=True):
        if x < 0:
            assert response.status_code == 500
            assert "x must not be negative" in response.json()["message"]
        elif x == 13:
            assert response.status_code == 500
            assert "Could not answer" in response.json()["message"]
        else:
            assert response.status_code == 200
            assert response.json() == {"predictions": [x * 2]}


def test_requests_with_different_params_never_share_a_call(servers, iris):
    frames = [sample(iris, rows=2, seed=i) for i in range(90)]
    scales = [float(i % 3 + 1) for i in range(90)]
    bodies = [
        {"dataframe_split": f.to_dict(orient="split"), "params": {"scale": s}}
        for f, s in zip(frames, scales, strict=True)
    ]
    responses = burst(servers["scaled_sum"], bodies)
    for frame, scale, response in zip(frames, scales, responses, strict=True):
        assert response.json() == {"predictions": pytest.approx(frame.sum(axis=1) * scale)}


def test_tensor_requests_batch_too(servers):
    server = servers["tensor"]
    arrays = [np.random.default_rng(i).normal(size=(1 + i % 3, 4)) for i in range(90)]
    calls_before = metric(server, "modelhost_batch_rows_count")
    responses = burst(server, [{"inputs": a.tolist()} for a in arrays])
    for array, response in zip(arrays, responses, strict=True):
        assert response.json() == {"predictions": np.sqrt((array**2).sum(axis=1)).tolist()}
    assert metric(server, "modelhost_batch_rows_count") - calls_before < len(arrays)


@pytest.fixture(scope="module")
def unbatched_two_workers(model_paths, log_dir):
    server = Server(
        model_paths["classifier"], "--workers", "2", "--max-batch-size", "1", log_dir=log_dir
    )
    server.start().wait_ready()
    yield server
    server.stop()


def test_batching_off_and_metrics_summed_over_workers(unbatched_two_workers, iris):
    server = unbatched_two_workers
    frames = [sample(iris, rows=1, seed=i) for i in range(60)]
    responses = burst(server, [{"dataframe_split": f.to_dict(orient="split")} for f in frames])
    assert all(r.status_code == 200 for r in responses)
    assert metric(server, "modelhost_batch_rows_count") == 60
    assert metric(server, "modelhost_requests_total") == 60


@pytest.fixture(scope="module")
def patient(model_paths, log_dir):
    """A server whose batches may wait long for company, so only arrivals decide a batch."""
    server = Server(model_paths["classifier"], "--max-batch-delay-ms", "2000", log_dir=log_dir)
    server.start().wait_ready()
    yield server
    server.stop()


def test_a_crowd_arriving_one_by_one_is_batched_whole(patient, iris):
    """Through a proxy a crowd's requests arrive one by one: the batch keeps taking them."""
    frames = [sample(iris, rows=1, seed=i) for i in range(100)]
    bodies = [json.dumps({"dataframe_split": f.to_dict(orient="split")}).encode() for f in frames]
    # A crowd of 10 at once: the last batch the server saw held up to 10 requests.
    assert all(r.status_code == 200 for r in burst(patient, bodies[:10]))
    calls_before = metric(patient, "modelhost_batch_rows_count")

    # Then 90, a millisecond apart: without taking the trickle, batches of about 10.
    connections = [socket.create_connection(("127.0.0.1", patient.port)) for _ in bodies[10:]]
    try:
        for connection, body in zip(connections, bodies[10:], strict=True):
            head = (
                "POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            connection.sendall(head.encode() + body)
            time.sleep(0.001)
        statuses = []
        for connection in connections:
            connection.settimeout(60)
            response = http.client.HTTPResponse(connection)
            response.begin()
            response.read()
            statuses.append(response.status)
    finally:
        for connection in connections:
            connection.close()

    assert statuses == [200] * 90
    calls = metric(patient, "modelhost_batch_rows_count") - calls_before
    assert calls <= 4, f"{calls} predict calls for a crowd of 90"
