"""The scoring protocol alone: request bodies in, model input out; predictions in, JSON out.

No model is loaded and no process started: the protocol reads a model only through its
`ModelSpec`, built here as `ServedModel.load` builds it from a model's MLflow metadata.
"""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys

import numpy as np
import orjson
import pandas as pd
import pytest
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from modelhost.errors import InvalidInput, ModelhostError, UnsupportedMediaType
from modelhost.worker.protocol import FrameBuilder, ModelInput, ModelSpec, Table, parse, render

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
RECORDS = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
SPLIT = {"columns": FEATURES, "data": ROWS}
FRAME = pd.DataFrame(ROWS, columns=FEATURES)

# As a model's signature describes it: iris features, all doubles, and two params.
IRIS = ModelSpec(
    Schema([ColSpec(DataType.double, name) for name in FEATURES]),
    ParamSchema([ParamSpec("scale", DataType.double, 1.0), ParamSpec("offset", DataType.long, 0)]),
)
TENSOR = ModelSpec(Schema([TensorSpec(np.dtype("float64"), (-1, 4))]))
NAMED_TENSORS = ModelSpec(
    Schema(
        [TensorSpec(np.dtype("float64"), (-1, 2), "a"), TensorSpec(np.dtype("int64"), (-1,), "b")]
    )
)
CHAT = ModelSpec(None, ParamSchema([ParamSpec("temperature", DataType.double, 0.5)]))
TYPED = ModelSpec(None, None, typed_inputs=True)  # a signature from the model's type hints


def send(value, content_type: str = JSON, spec: ModelSpec = IRIS) -> ModelInput:
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse(body, content_type, spec)


def built(model_input: ModelInput, spec: ModelSpec = IRIS):
    """What `predict` would be given for this input, alone in its batch."""
    return FrameBuilder(spec)(model_input.data)


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def test_the_protocol_stands_alone():
    # A fresh interpreter: what importing the protocol pulls in of the model server.
    code = (
        "import sys, modelhost.worker.protocol; "
        "print(sorted(m for m in sys.modules if m.startswith('modelhost.worker')))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert (
        imported.stdout.strip().splitlines()[-1]
        == "['modelhost.worker', 'modelhost.worker.protocol']"
    )


# --- every request shape of one DataFrame


@pytest.mark.parametrize(
    ("body", "content_type", "wrapped"),
    [
        ({"dataframe_split": SPLIT}, JSON, True),
        ({"dataframe_split": {**SPLIT, "index": [0, 1]}}, JSON, True),
        ({"dataframe_records": RECORDS}, JSON, True),
        ({"dataframe_split": SPLIT, "params": {"scale": 2.0}}, JSON, True),
        (json.dumps(json.dumps({"dataframe_split": SPLIT})).encode(), JSON, True),
        (FRAME.to_csv(index=False).encode(), CSV, True),
        (FRAME.to_csv(index=False).encode(), f"{CSV}; charset=utf-8", True),
        (parquet(FRAME), PARQUET, True),
        (RECORDS, JSON, False),
        (SPLIT, JSON, False),
        ({**SPLIT, "index": [0, 1]}, JSON, False),
        (RECORDS, f"{JSON}; format=pandas-records", False),
        (SPLIT, f"{JSON}; format=pandas-split", False),
        ({"dataframe_records": RECORDS}, f"{JSON}; format=pandas-split", True),
        ({"input_data": SPLIT}, JSON, False),
        ({"input_data": SPLIT, "params": {"scale": 2.0}}, JSON, False),
    ],
    ids=[
        "split",
        "split with default index",
        "records",
        "split with params",
        "JSON encoded twice",
        "CSV",
        "CSV with charset",
        "Parquet",
        "1.x records",
        "1.x split",
        "1.x split with index",
        "1.x format=pandas-records",
        "1.x format=pandas-split",
        "MLflow body with a format parameter",
        "Azure split",
        "Azure split with params",
    ],
)
def test_every_frame_form_reaches_the_model_as_the_same_frame(body, content_type, wrapped):
    model_input = send(body, content_type)
    assert model_input.wrapped is wrapped
    assert model_input.rows == 2
    assert model_input.batch_key is not None
    pd.testing.assert_frame_equal(built(model_input), FRAME)


def test_integers_in_double_columns_become_doubles_as_mlflow_casts_them():
    model_input = send({"dataframe_split": {"columns": FEATURES, "data": [[5, 3, 1, 0]]}})
    frame = built(model_input)
    assert list(frame.dtypes) == [np.float64] * 4
    assert frame.iloc[0].tolist() == [5.0, 3.0, 1.0, 0.0]


def test_rows_mlflow_must_read_itself_still_reach_the_model():
    # Nested values, and an index that means something: no Table, MLflow's own frame.
    spec = ModelSpec()
    nested = send({"dataframe_records": [{"tags": ["a", "b"]}]}, spec=spec)
    assert isinstance(nested.data, pd.DataFrame)
    assert nested.data["tags"][0] == ["a", "b"]
    indexed = send({"dataframe_split": {**SPLIT, "index": [7, 9]}})
    assert list(indexed.data.index) == [7, 9]
    assert indexed.batch_key is None


@pytest.mark.parametrize(
    "body",
    [{"instances": ROWS}, {"inputs": ROWS}, {"input_data": ROWS}],
    ids=["instances", "inputs", "Azure tensor"],
)
def test_tensor_forms_reach_the_model_as_an_array(body):
    model_input = send(body, spec=TENSOR)
    assert model_input.wrapped is ("input_data" not in body)
    assert isinstance(model_input.data, np.ndarray)
    assert model_input.data.dtype == np.float64
    np.testing.assert_array_equal(model_input.data, np.array(ROWS))
    assert model_input.rows == 2
    assert built(model_input, TENSOR) is model_input.data  # arrays need no building


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": {"a": [[1, 2], [3, 4]], "b": [5, 6]}},
        {"instances": [{"a": [1, 2], "b": 5}, {"a": [3, 4], "b": 6}]},
    ],
    ids=["columnar", "row by row"],
)
def test_named_tensors_reach_the_model_as_a_dict_of_arrays(body):
    model_input = send(body, spec=NAMED_TENSORS)
    assert set(model_input.data) == {"a", "b"}
    np.testing.assert_array_equal(model_input.data["a"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert model_input.data["a"].dtype == np.float64
    np.testing.assert_array_equal(model_input.data["b"], np.array([5, 6]))
    assert model_input.rows == 2


def test_typed_models_get_inputs_as_sent():
    model_input = send({"inputs": ["a question", "another"], "params": {"n": 1}}, spec=TYPED)
    assert model_input.data == ["a question", "another"]
    assert model_input.params == {"n": 1}
    assert model_input.wrapped


def test_chat_requests_split_params_by_the_schema_and_answer_unwrapped():
    messages = [{"role": "user", "content": "hi"}]
    model_input = send({"messages": messages, "temperature": 0.1, "max_tokens": 5}, spec=CHAT)
    assert model_input.data == {"messages": messages, "max_tokens": 5}
    assert model_input.params == {"temperature": 0.1}
    assert not model_input.wrapped
    assert model_input.batch_key is None  # chat requests are each a call of their own


def test_params_are_passed_as_sent():
    model_input = send({"dataframe_records": RECORDS, "params": {"scale": 2.0, "offset": 3}})
    assert model_input.params == {"scale": 2.0, "offset": 3}
    assert send({"dataframe_records": RECORDS}).params is None
    azure = send({"input_data": ROWS, "params": {"scale": 2.0}}, spec=TENSOR)
    assert azure.params == {"scale": 2.0}


# --- bad requests: the error a client gets, and that it says what to send


@pytest.mark.parametrize(
    ("body", "content_type", "spec", "words"),
    [
        (b'{"dataframe_split": {"columns": [', JSON, IRIS, ["not valid JSON", "dataframe_split"]),
        (b"", JSON, IRIS, ["not valid JSON"]),
        (b"42", JSON, IRIS, ["Expected a JSON object", "dataframe_split"]),
        ({"rows": ROWS}, JSON, IRIS, ["'rows'", "dataframe_split"]),
        ({"dataframe_split": SPLIT, "inputs": ROWS}, JSON, IRIS, ["exactly one", "'inputs'"]),
        ({"dataframe_split": ROWS}, JSON, IRIS, ["split format must be a dictionary"]),
        ({"dataframe_records": {"a": 1}}, JSON, IRIS, ["must be a list of records"]),
        (
            {"dataframe_split": {"columns": FEATURES, "data": [[1, 2]]}},
            JSON, IRIS, ["dataframe_split", "not a valid dataframe"],
        ),
        ({"dataframe_split": SPLIT, "params": 3}, JSON, IRIS, ["'params' must be a JSON object"]),
        ({"input_data": ROWS, "extra": 1}, JSON, IRIS, ["'extra'", "input_data"]),
        ({"dataframe_split": SPLIT}, JSON, TYPED, ["type hints", "'inputs'", "dataframe_split"]),
        (b"\xff\xfe", CSV, IRIS, ["UTF-8"]),
        (b"sepal length (cm)\nnot a number\n", CSV, IRIS, ["CSV", "to_csv"]),
        (b"not parquet", PARQUET, IRIS, ["Parquet", "to_parquet"]),
    ],
    ids=[
        "malformed",
        "empty",
        "scalar",
        "unknown field",
        "two input fields",
        "split not an object",
        "records not a list",
        "short row",
        "params not an object",
        "Azure extra field",
        "typed model sent a frame",
        "CSV not UTF-8",
        "CSV of the wrong types",
        "not Parquet",
    ],
)  # fmt: skip
def test_bad_bodies_are_invalid_input_that_says_what_to_send(body, content_type, spec, words):
    with pytest.raises(InvalidInput) as raised:
        send(body, content_type, spec)
    for word in words:
        assert word in raised.value.message


def test_a_value_of_the_wrong_type_fails_when_its_frame_is_built():
    # Rows are parsed as a Table; the frame, and so the cast that fails, is built per batch.
    model_input = send({"dataframe_split": {"columns": FEATURES, "data": [["a", 1, 2, 3]]}})
    with pytest.raises(InvalidInput) as raised:
        built(model_input)
    assert "sepal length (cm)" in raised.value.message


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        (None, ["Missing Content-Type", "application/json"]),
        ("text/plain", ["Unsupported Content-Type", "application/json"]),
        ("application/x-www-form-urlencoded", ["Unsupported Content-Type"]),
        ("application/json; charset=latin-1", ["charset", "UTF-8"]),
        ("application/json; format=pandas-columns", ["format=pandas-split"]),
        ("text/csv; format=pandas-split", ["parameters"]),
    ],
)
def test_unsupported_content_types_say_what_is_supported(content_type, words):
    with pytest.raises(UnsupportedMediaType) as raised:
        parse(json.dumps({"dataframe_split": SPLIT}).encode(), content_type, IRIS)
    for word in words:
        assert word in raised.value.message
    assert raised.value.status == 415


def test_content_type_parameters_are_read_case_insensitively():
    model_input = send({"dataframe_split": SPLIT}, "Application/JSON; Charset=UTF-8")
    assert model_input.rows == 2


# --- which requests may share a predict call


def split(rows, **extra) -> dict:
    return {"dataframe_split": {"columns": FEATURES, "data": rows}, **extra}


def test_plain_rows_wait_as_a_table_until_their_batch_is_built():
    model_input = send(split([ROWS[0]] * 3))
    assert isinstance(model_input.data, Table)
    assert model_input.rows == 3


def test_split_and_records_of_the_same_rows_share_a_batch():
    keys = {
        send(split([ROWS[0]])).batch_key,
        send({"dataframe_records": RECORDS[:1]}).batch_key,
        send(RECORDS[:1]).batch_key,  # MLflow 1.x
        send({"input_data": {"columns": FEATURES, "data": [ROWS[0]]}}).batch_key,  # Azure
    }
    assert len(keys) == 1


def test_rows_of_other_types_or_params_do_not_share_a_batch():
    floats = send(split([ROWS[0]]))
    ints = send(split([[5, 3, 1, 0]]))
    with_params = send(split([ROWS[0]], params={"scale": 2.0}))
    assert len({floats.batch_key, ints.batch_key, with_params.batch_key}) == 3


def test_a_meaningful_index_keeps_a_request_alone():
    assert send({"dataframe_split": {**SPLIT, "index": [7, 8]}}).batch_key is None
    assert send({"dataframe_split": {**SPLIT, "index": [0, 1]}}).batch_key is not None


def test_arrays_share_a_batch_only_with_arrays_of_the_same_row_shape():
    four = send({"inputs": ROWS}, spec=TENSOR)
    also_four = send({"instances": ROWS[:1]}, spec=TENSOR)
    three = send({"inputs": [row[:3] for row in ROWS]}, spec=ModelSpec())
    assert four.batch_key == also_four.batch_key
    assert three.batch_key != four.batch_key


# --- rendering predictions


@pytest.mark.parametrize(
    ("predictions", "expected"),
    [
        (np.array([0, 2, 1]), [0, 2, 1]),
        (np.array([[0.5, 1.5]]), [[0.5, 1.5]]),
        (pd.DataFrame({"label": ["big"], "score": [0.5]}), [{"label": "big", "score": 0.5}]),
        (pd.Series([1.0, 2.0], name="y"), [{"y": 1.0}, {"y": 2.0}]),
        (pd.Series([1.0]), [{"0": 1.0}]),
        ({"a": np.array([1, 2]), "b": np.float32(0.25)}, {"a": [1, 2], "b": 0.25}),
        ([np.int64(3), np.float64(1.5), np.bool_(True)], [3, 1.5, True]),
        (np.float32(1.5), 1.5),
        (np.int64(3), 3),
        (np.array(["a", None], dtype=object), ["a", None]),
        (b"hi", "aGk=\n"),
        (datetime.date(2024, 1, 2), "2024-01-02"),
        (pd.Timestamp("2024-01-02 03:04"), "2024-01-02T03:04:00"),
        # MLflow writes NaN, which is not JSON; an answer here is always valid JSON.
        (np.array([np.nan, 1.0]), [None, 1.0]),
    ],
    ids=[
        "int array",
        "2-d array",
        "frame",
        "named series",
        "series",
        "dict of arrays and a scalar",
        "list of numpy scalars",
        "float32 scalar",
        "int64 scalar",
        "object array",
        "bytes",
        "date",
        "timestamp",
        "NaN",
    ],
)
def test_predictions_render_as_mlflow_answers(predictions, expected):
    assert orjson.loads(render(predictions, wrapped=True)) == {"predictions": expected}
    assert orjson.loads(render(predictions, wrapped=False)) == expected  # 1.x and Azure


def test_predictions_json_cannot_hold_raise():
    # The batcher turns this into a 500 for that request alone.
    with pytest.raises(TypeError):
        render([{"a set"}], wrapped=True)


def test_protocol_errors_carry_mlflow_error_bodies():
    with pytest.raises(ModelhostError) as raised:
        send(b"42")
    assert orjson.loads(raised.value.body()) == {
        "error_code": "BAD_REQUEST",
        "message": raised.value.message,
    }
