"""Every accepted request form answers exactly what the model's own `predict` returns."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from support import mlflow_json, sample

JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
ROW_COUNTS = (1, 7, 40)


def dataframe_payloads(frame: pd.DataFrame) -> list[tuple[str, bytes | str, str, bool]]:
    """(form, body, content type, answer wrapped in "predictions") for every DataFrame form."""
    split = frame.to_dict(orient="split")
    plain = {"columns": split["columns"], "data": split["data"]}
    records = frame.to_dict(orient="records")
    dumps = json.dumps
    return [
        ("dataframe_split", dumps({"dataframe_split": plain}), JSON, True),
        ("dataframe_split+index", dumps({"dataframe_split": split}), JSON, True),
        ("dataframe_records", dumps({"dataframe_records": records}), JSON, True),
        ("instances", dumps({"instances": records}), JSON, True),
        ("inputs", dumps({"inputs": frame.to_dict(orient="list")}), JSON, True),
        ("csv", frame.to_csv(index=False), "text/csv", True),
        ("parquet", frame.to_parquet(), PARQUET, True),
        ("charset", dumps({"dataframe_split": plain}), JSON + "; charset=utf-8", True),
        ("1.x records", dumps(records), JSON, False),
        ("1.x split", dumps(split), JSON, False),
        ("1.x format=pandas-split", dumps(split), JSON + "; format=pandas-split", False),
        ("1.x format=pandas-records", dumps(records), JSON + "; format=pandas-records", False),
        ("azure input_data", dumps({"input_data": split}), JSON, False),
        ("double-encoded", dumps(dumps({"dataframe_split": plain})), JSON, True),
    ]


def check_all_forms(server, model_path, frame: pd.DataFrame, params=None) -> int:
    model = mlflow.pyfunc.load_model(str(model_path))
    expected = mlflow_json(model.predict(frame, params=params))
    checked = 0
    for form, body, content_type, wrapped in dataframe_payloads(frame):
        if params is not None:
            if content_type != JSON or not wrapped or form == "double-encoded":
                continue  # params travel only inside an MLflow 2+ JSON object
            body = json.dumps({**json.loads(body), "params": params})
        response = server.invoke(body, content_type)
        assert response.status_code == 200, (form, response.text)
        answer = response.json()
        assert answer == ({"predictions": expected} if wrapped else expected), form
        checked += 1
    return checked


@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize("model", ["classifier", "forest_regressor", "frame_output"])
def test_iris_models_answer_every_form_as_predict_does(servers, model_paths, iris, model, rows):
    assert check_all_forms(servers[model], model_paths[model], sample(iris, rows, seed=rows)) == 14


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_regressor_answers_every_form_as_predict_does(servers, model_paths, rows):
    diabetes, _ = load_diabetes(return_X_y=True, as_frame=True)
    frame = diabetes.sample(rows, random_state=rows).reset_index(drop=True)
    assert check_all_forms(servers["regressor"], model_paths["regressor"], frame) == 14


def test_dataframe_output_answers_records(servers, iris):
    answer = servers["frame_output"].invoke({"dataframe_records": iris.head(2).to_dict("records")})
    assert answer.json() == {
        "predictions": [{"label": "big", "score": 10.2}, {"label": "small", "score": 9.5}]
    }


@pytest.mark.parametrize("params", [{"scale": 2.5}, {"scale": -1.0, "offset": 3}, {"offset": 7}])
def test_params_reach_the_model(servers, model_paths, iris, params):
    frame = sample(iris, 5, seed=3)
    assert check_all_forms(servers["scaled_sum"], model_paths["scaled_sum"], frame, params) == 5


def test_params_default_when_not_sent(servers, iris):
    frame = iris.head(2)
    answer = servers["scaled_sum"].invoke({"dataframe_split": frame.to_dict(orient="split")})
    assert answer.json() == {"predictions": pytest.approx(frame.sum(axis=1).tolist())}


def test_azure_wrapper_carries_params(servers, iris):
    frame = iris.head(3)
    answer = servers["scaled_sum"].invoke(
        {"input_data": frame.to_dict(orient="split"), "params": {"scale": 2.0}}
    )
    assert answer.json() == pytest.approx((frame.sum(axis=1) * 2.0).tolist())


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_tensor_model_answers_every_tensor_form(servers, model_paths, rows):
    array = np.random.default_rng(rows).normal(size=(rows, 4)).round(4)
    model = mlflow.pyfunc.load_model(str(model_paths["tensor"]))
    expected = mlflow_json(model.predict(array))
    tensor = array.tolist()
    forms = [
        ("instances", {"instances": tensor}, True),
        ("inputs", {"inputs": tensor}, True),
        ("azure input_data", {"input_data": tensor}, False),
        ("double-encoded", json.dumps({"inputs": tensor}), True),
    ]
    for form, body, wrapped in forms:
        response = servers["tensor"].invoke(body)
        assert response.status_code == 200, (form, response.text)
        assert response.json() == ({"predictions": expected} if wrapped else expected), form


def test_tensor_model_enforces_its_shape(servers):
    response = servers["tensor"].invoke({"inputs": [[1.0, 2.0, 3.0]]})
    assert response.status_code == 400
    assert "shape" in response.json()["message"]


def test_integers_in_double_columns_are_cast_as_mlflow_does(servers, model_paths, iris):
    frame = iris.head(4).round().astype(int)
    model = mlflow.pyfunc.load_model(str(model_paths["classifier"]))
    expected = mlflow_json(model.predict(frame.astype(float)))
    answer = servers["classifier"].invoke({"dataframe_split": frame.to_dict(orient="split")})
    assert answer.json() == {"predictions": expected}
