"""The server's other endpoints, and model URIs resolved through a real MLflow registry."""

from __future__ import annotations

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from support import Server, start_all, stop_all

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ONE_ROW = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]]}}


def test_ping_health_and_version(servers):
    url = servers["classifier"].url
    assert httpx.get(f"{url}/ping").status_code == 200
    assert httpx.get(f"{url}/health").json()["status"] == "READY"
    assert httpx.get(f"{url}/version").text == mlflow.__version__


def test_metadata_shows_signature_and_input_example(servers, model_paths, iris):
    metadata = httpx.get(f"{servers['classifier'].url}/metadata").json()
    assert metadata["model_uri"] == str(model_paths["classifier"])
    assert [column["name"] for column in metadata["signature"]["inputs"]] == FEATURES
    assert metadata["signature"]["inputs"][0]["type"] == "double"
    assert metadata["input_example"] == iris.head(3).to_dict(orient="records")
    assert "sklearn" in metadata["flavors"]
    params = httpx.get(f"{servers['scaled_sum'].url}/metadata").json()["signature"]["params"]
    assert {p["name"]: p["default"] for p in params} == {"scale": 1.0, "offset": 0}


def test_metrics_count_requests_errors_latency_and_batches(servers):
    server = servers["classifier"]
    server.invoke(ONE_ROW)
    server.invoke(b"{")
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("modelhost_requests_total", (("status", "200"),))] >= 1
    assert samples[("modelhost_requests_total", (("status", "400"),))] >= 1
    assert samples[("modelhost_request_errors_total", (("code", "BAD_REQUEST"),))] >= 1
    assert samples[("modelhost_request_duration_seconds_count", ())] >= 2
    # By version for the platform's servers; `modelhost serve`'s one model has none.
    assert samples[("modelhost_batch_rows_count", (("version", ""),))] >= 1
    assert samples[("modelhost_predict_duration_seconds_count", (("version", ""),))] >= 1


@pytest.fixture(scope="module")
def registry(tmp_path_factory, iris):
    """A real MLflow registry (SQLite, local artifacts) with one model in two versions."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("modelhost-tests")
    labels = [0, 1, 2] * 50
    run_ids = []
    for c in (1.0, 0.01):
        with mlflow.start_run() as run:
            model = LogisticRegression(C=c, max_iter=1000).fit(iris, labels)
            mlflow.sklearn.log_model(
                model,
                name="model",
                input_example=iris.head(2),
                registered_model_name="iris",
                pip_requirements=["mlflow", "scikit-learn"],
            )
            run_ids.append(run.info.run_id)
    MlflowClient().set_registered_model_alias("iris", "champion", "2")
    yield uri, run_ids
    mlflow.set_tracking_uri(None)


def test_serves_registry_uris(registry, log_dir, iris):
    uri, run_ids = registry
    env = {"MLFLOW_TRACKING_URI": uri}
    servers = start_all(
        {
            model_uri: Server(model_uri, log_dir=log_dir, env=env)
            for model_uri in (
                "models:/iris/1",
                "models:/iris@champion",
                f"runs:/{run_ids[0]}/model",
            )
        }
    )
    try:
        for model_uri, server in servers.items():
            expected = mlflow.pyfunc.load_model(model_uri).predict(iris.head(1)).tolist()
            answer = server.invoke(ONE_ROW)
            assert answer.json() == {"predictions": expected}, model_uri
            metadata = httpx.get(f"{server.url}/metadata").json()
            assert metadata["model_uri"] == model_uri
        champion = httpx.get(f"{servers['models:/iris@champion'].url}/metadata").json()
        assert champion["run_id"] == run_ids[1]
    finally:
        stop_all(servers)


def test_unknown_model_uri_fails_with_a_clear_message(registry, log_dir):
    uri, _ = registry
    server = Server("models:/no-such-model/1", log_dir=log_dir, env={"MLFLOW_TRACKING_URI": uri})
    server.start()
    assert server.process.wait(timeout=120) != 0
    assert "no-such-model" in server.log()
