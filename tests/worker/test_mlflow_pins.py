"""What modelhost relies on from MLflow's private and semi-private functions, pinned.

A model server runs under whatever MLflow a model's environment holds, so a newer (or older)
MLflow may change these under us. Each test names what in modelhost relies on the behaviour;
when one fails, that is the code to change.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.pyfunc import scoring_server
from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

from modelhost.worker.protocol import FrameBuilder, ModelSpec, parse

TOYS = Path(__file__).parents[1] / "toys"
REQUIREMENTS = ["mlflow", "pandas"]  # declared, so saving infers nothing in a subprocess
COLUMNS = ["a", "b"]
DOUBLES = Schema([ColSpec(DataType.double, name) for name in COLUMNS])
TENSOR = Schema([TensorSpec(np.dtype("float64"), (-1, 2))])


def bad_request(raised: pytest.ExceptionInfo[MlflowException]) -> str:
    """The message of an MlflowException that says the request was bad, as modelhost reads it."""
    assert raised.value.error_code == "BAD_REQUEST"
    assert isinstance(raised.value.message, str)
    return raised.value.message


# --- scoring_server.infer_and_parse_data: protocol.py parses 'instances' and 'inputs' with it,
# and FrameBuilder builds every DataFrame a Table could not become directly with it.


def test_infer_and_parse_data_builds_frames_cast_to_the_schema():
    split = {"dataframe_split": {"columns": COLUMNS, "data": [[1, 2], [3, 4]]}}
    frame = scoring_server.infer_and_parse_data(split, DOUBLES)
    expected = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], columns=COLUMNS)
    pd.testing.assert_frame_equal(frame, expected)
    records = {"dataframe_records": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}
    pd.testing.assert_frame_equal(scoring_server.infer_and_parse_data(records, DOUBLES), expected)
    indexed = {"dataframe_split": {"columns": ["a"], "index": [7], "data": [[1.0]]}}
    assert list(scoring_server.infer_and_parse_data(indexed, None).index) == [7]


def test_infer_and_parse_data_builds_tensors():
    for key in ("instances", "inputs"):
        array = scoring_server.infer_and_parse_data({key: [[1, 2]]}, TENSOR)
        assert isinstance(array, np.ndarray)
        assert array.dtype == np.float64
        assert array.tolist() == [[1.0, 2.0]]
    named = scoring_server.infer_and_parse_data({"inputs": {"x": [[1, 2]], "y": [3]}}, None)
    assert {key: value.tolist() for key, value in named.items()} == {"x": [[1, 2]], "y": [3]}


@pytest.mark.parametrize(
    ("data", "schema", "words"),
    [
        ({"dataframe_split": [[1, 2]]}, None, "split format must be a dictionary"),
        ({"dataframe_records": {"a": 1}}, None, "must be a list of records"),
        ({"dataframe_split": {"columns": COLUMNS, "data": [[1]]}}, None, "dataframe_split"),
        ({"dataframe_split": {"columns": COLUMNS, "data": [["x", 1]]}}, DOUBLES, "column a"),
        ({"dataframe_split": {}, "inputs": []}, None, "dataframe_split"),
    ],
    ids=["split not a dict", "records not a list", "short row", "uncastable", "two fields"],
)
def test_infer_and_parse_data_raises_bad_request(data, schema, words):
    with pytest.raises(MlflowException) as raised:
        scoring_server.infer_and_parse_data(data, schema)
    assert words in bad_request(raised)


# --- scoring_server.parse_csv_input and parse_parquet_input: protocol.py parses CSV and Parquet
# bodies with them, and turns their MlflowException into a 400.


def test_parse_csv_input_reads_with_the_schema_types():
    frame = scoring_server.parse_csv_input(io.StringIO("a,b\n1,2\n"), DOUBLES)
    pd.testing.assert_frame_equal(frame, pd.DataFrame([[1.0, 2.0]], columns=COLUMNS))
    assert scoring_server.parse_csv_input(io.StringIO("a\nx\n"), None)["a"].tolist() == ["x"]
    with pytest.raises(MlflowException) as raised:
        scoring_server.parse_csv_input(io.StringIO("a,b\nx,2\n"), DOUBLES)
    assert "to_csv" in bad_request(raised)


def test_parse_parquet_input_reads_a_frame():
    buffer = io.BytesIO()
    pd.DataFrame({"a": [1.5]}).to_parquet(buffer)
    frame = scoring_server.parse_parquet_input(io.BytesIO(buffer.getvalue()))
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"a": [1.5]}))
    with pytest.raises(MlflowException) as raised:
        scoring_server.parse_parquet_input(io.BytesIO(b"not parquet"))
    assert "to_parquet" in bad_request(raised)


# --- serving_data_parser.is_unified_llm_input: protocol.py sends chat, completions and
# embeddings bodies down MLflow's LLM path with it.


def test_is_unified_llm_input_knows_the_llm_fields():
    for key in ("messages", "prompt", "input"):
        assert is_unified_llm_input({key: "hi"})
    for key in ("dataframe_split", "dataframe_records", "instances", "inputs", "input_data"):
        assert not is_unified_llm_input({key: []})


# --- Model._is_signature_from_type_hint, get_input_schema, get_params_schema:
# ModelSpec.from_metadata reads a model's description from them when ServedModel loads it.


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory) -> Model:
    path = tmp_path_factory.mktemp("typed") / "model"
    mlflow.pyfunc.save_model(
        path, python_model=str(TOYS / "typed_echo.py"), pip_requirements=REQUIREMENTS
    )
    return Model.load(str(path))


@pytest.fixture(scope="module")
def frame_model() -> Model:
    signature = infer_signature(
        pd.DataFrame({"a": [1.0], "b": [2.0]}), np.zeros(1), params={"scale": 1.0}
    )
    return Model(signature=signature)


def test_model_metadata_tells_typed_inputs_and_schemas(typed_model, frame_model):
    assert typed_model._is_signature_from_type_hint() is True
    assert frame_model._is_signature_from_type_hint() is False
    assert Model()._is_signature_from_type_hint() is False  # saved with no signature
    typed, frames = ModelSpec.from_metadata(typed_model), ModelSpec.from_metadata(frame_model)
    assert typed.typed_inputs and not frames.typed_inputs
    assert frames.input_schema.input_names() == COLUMNS
    assert frames.params_schema.to_dict() == [
        {"name": "scale", "type": "double", "default": 1.0, "shape": None}
    ]
    assert ModelSpec.from_metadata(Model()) == ModelSpec()


# --- scoring_server._parse_json_data: protocol.py dispatches MLflow 2/3 JSON itself, as this
# function does, so it needs no loaded model. MLflow's own dispatch must still agree.


def mlflow_parse(body: dict, metadata: Model):
    return scoring_server._parse_json_data(dict(body), metadata, metadata.get_input_schema())


def modelhost_parse(body: dict, metadata: Model):
    spec = ModelSpec.from_metadata(metadata)
    model_input = parse(json.dumps(body).encode(), "application/json", spec)
    return FrameBuilder(spec)(model_input.data), model_input.params, not model_input.wrapped


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": COLUMNS, "data": [[1, 2]]}, "params": {"scale": 2.0}},
        {"dataframe_records": [{"a": 1.5, "b": 2}]},
        {"dataframe_split": {"columns": COLUMNS, "index": [4], "data": [[1, 2]]}},
    ],
    ids=["split with params", "records", "split with an index"],
)
def test_parse_json_data_builds_the_frames_modelhost_builds(body, frame_model):
    ours, params, unwrapped = modelhost_parse(body, frame_model)
    theirs = mlflow_parse(body, frame_model)
    pd.testing.assert_frame_equal(ours, theirs.data)
    assert (params, unwrapped) == (theirs.params, theirs.is_unified_llm_input)


def test_parse_json_data_passes_tensors_as_modelhost_does():
    metadata = Model(signature=ModelSignature(inputs=TENSOR))
    body = {"instances": [[1, 2], [3, 4]]}
    ours, params, unwrapped = modelhost_parse(body, metadata)
    theirs = mlflow_parse(body, metadata)
    np.testing.assert_array_equal(ours, theirs.data)
    assert ours.dtype == theirs.data.dtype
    assert (params, unwrapped) == (theirs.params, theirs.is_unified_llm_input)


def test_parse_json_data_passes_typed_inputs_as_sent(typed_model):
    body = {"inputs": ["a", "b"], "params": {"n": 1}}
    theirs = mlflow_parse(body, typed_model)
    assert modelhost_parse(body, typed_model) == (theirs.data, theirs.params, False)
    with pytest.raises(MlflowException, match="'inputs'"):
        mlflow_parse({"dataframe_split": {"columns": ["a"], "data": [["x"]]}}, typed_model)


def test_parse_json_data_splits_llm_params_by_the_schema():
    params = ParamSchema([ParamSpec("temperature", DataType.double, 0.5)])
    metadata = Model(signature=ModelSignature(inputs=None, params=params))
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.1, "stream": False}
    theirs = mlflow_parse(body, metadata)
    assert theirs.is_unified_llm_input
    assert modelhost_parse(body, metadata) == (theirs.data, theirs.params, True)
    assert theirs.params == {"temperature": 0.1}


# --- proto_json_utils._get_jsonable_obj and NumpyEncoder: protocol.render renders predictions
# as MLflow does with them (orjson writes the result; NumpyEncoder.default is its fallback).


def test_get_jsonable_obj_turns_arrays_and_frames_into_lists():
    assert _get_jsonable_obj(np.array([[1, 2]]), pandas_orient="records") == [[1, 2]]
    frame = pd.DataFrame({"label": ["big"], "score": [0.5]})
    assert _get_jsonable_obj(frame, pandas_orient="records") == [{"label": "big", "score": 0.5}]
    series = pd.Series([1.0], name="y")
    assert _get_jsonable_obj(series, pandas_orient="records") == [{"y": 1.0}]
    # Everything else is left as it is, numpy scalars and dicts of arrays included.
    for value in (np.float32(1.5), {"a": np.array([1])}, [1, 2], "text", None):
        assert _get_jsonable_obj(value, pandas_orient="records") is value


def test_numpy_encoder_default_renders_what_json_lacks():
    default = NumpyEncoder().default
    assert default(b"hi") == "aGk=\n"
    assert default(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert default(datetime.datetime(2024, 1, 2, 3, 4)) == "2024-01-02T03:04:00"
    assert default(pd.Timestamp("2024-01-02")) == "2024-01-02T00:00:00"
    assert default(np.float32(1.5)) == 1.5
    assert default(np.array(["a", None], dtype=object)) == ["a", None]
    with pytest.raises(TypeError):
        default({"a set"})  # the batcher answers that request alone with a 500


# --- PyFuncModel.predict: ServedModel.predict maps the MlflowException it raises on schema and
# params enforcement to a 400, and the model's own exceptions to a 500.


@pytest.fixture(scope="module")
def scaled_sum(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaled_sum") / "model"
    frame = pd.DataFrame({"a": [1.0], "b": [2.0]})
    mlflow.pyfunc.save_model(
        path, python_model=str(TOYS / "scaled_sum.py"), pip_requirements=REQUIREMENTS,
        signature=infer_signature(frame, np.zeros(1), params={"scale": 1.0, "offset": 0}),
    )  # fmt: skip
    return mlflow.pyfunc.load_model(str(path))


def test_pyfunc_predict_enforces_the_signature_with_mlflow_exception(scaled_sum):
    frame = pd.DataFrame({"a": [1.0], "b": [2.0]})
    assert scaled_sum.predict(frame, params={"scale": 2.0}).tolist() == [6.0]
    with pytest.raises(MlflowException, match="missing inputs"):
        scaled_sum.predict(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(MlflowException, match="scale"):
        scaled_sum.predict(frame, params={"scale": "not a number"})
