"""Which requests may share a predict call: decided at parse time, without HTTP."""

from __future__ import annotations

import json

import pytest

from modelhost.worker.model import ServedModel
from modelhost.worker.protocol import Table, parse

JSON = "application/json"
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@pytest.fixture(scope="module")
def classifier(model_paths) -> ServedModel:
    return ServedModel.load(str(model_paths["classifier"]))


def split(rows, **extra) -> bytes:
    return json.dumps({"dataframe_split": {"columns": FEATURES, "data": rows}, **extra}).encode()


def test_plain_rows_wait_as_a_table_until_their_batch_is_built(classifier):
    model_input = parse(split([[5.1, 3.5, 1.4, 0.2]] * 3), JSON, classifier)
    assert isinstance(model_input.data, Table)
    assert model_input.rows == 3
    assert model_input.wrapped


def test_split_and_records_of_the_same_rows_share_a_batch(classifier):
    records = [dict(zip(FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True))]
    a = parse(split([[5.1, 3.5, 1.4, 0.2]]), JSON, classifier)
    b = parse(json.dumps({"dataframe_records": records}).encode(), JSON, classifier)
    c = parse(json.dumps(records).encode(), JSON, classifier)  # MLflow 1.x
    assert a.batch_key == b.batch_key == c.batch_key


def test_rows_of_other_types_or_params_do_not_share_a_batch(classifier):
    floats = parse(split([[5.1, 3.5, 1.4, 0.2]]), JSON, classifier)
    ints = parse(split([[5, 3, 1, 0]]), JSON, classifier)
    with_params = parse(split([[5.1, 3.5, 1.4, 0.2]], params={"a": 1}), JSON, classifier)
    assert len({floats.batch_key, ints.batch_key, with_params.batch_key}) == 3


def test_a_meaningful_index_keeps_a_request_alone(classifier):
    body = json.dumps(
        {"dataframe_split": {"columns": FEATURES, "index": [7], "data": [[5.1, 3.5, 1.4, 0.2]]}}
    ).encode()
    assert parse(body, JSON, classifier).batch_key is None
    default_index = json.dumps(
        {"dataframe_split": {"columns": FEATURES, "index": [0], "data": [[5.1, 3.5, 1.4, 0.2]]}}
    ).encode()
    assert parse(default_index, JSON, classifier).batch_key is not None


def test_content_type_parameters_are_read_case_insensitively(classifier):
    model_input = parse(
        split([[5.1, 3.5, 1.4, 0.2]]), "Application/JSON; Charset=UTF-8", classifier
    )
    assert model_input.rows == 1
