"""The MLflow scoring protocol: a request body and its content type in, model input out;
predictions in, the answer's JSON out.

Everything MLflow 2/3 accepts is parsed by MLflow's own scoring code, so what reaches the model
is exactly what `mlflow models serve` would pass; the older forms (MLflow 1.x, Azure ML's
`input_data` wrapper) are translated into those first. It reads the model only through a
`ModelSpec`, so it parses and renders with no model loaded. Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from io import BytesIO, StringIO
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input
from mlflow.types import ColSpec, DataType, ParamSchema, Schema
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

from modelhost.errors import InvalidInput, UnsupportedMediaType

if TYPE_CHECKING:
    from mlflow.models import Model

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (JSON, CSV, PARQUET)

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
LEGACY_FORMATS = {"pandas-split": "split", "pandas-records": "records"}

EXPECTED_JSON = (
    "Send a JSON object with exactly one of the fields "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs' (and optionally 'params'), "
    'for example {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}.'
)

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_fallback = NumpyEncoder().default  # MLflow's own rendering of bytes, dates and numpy leftovers


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the protocol reads of a model: read once from its MLflow metadata at load."""

    input_schema: Schema | None = None
    params_schema: ParamSchema | None = None
    # The signature comes from type hints: MLflow passes the field `inputs` as sent.
    typed_inputs: bool = False

    @classmethod
    def from_metadata(cls, metadata: Model) -> ModelSpec:
        # Models saved by an MLflow older than type-hint signatures lack the method.
        typed = getattr(metadata, "_is_signature_from_type_hint", lambda: False)()
        return cls(metadata.get_input_schema(), metadata.get_params_schema(), bool(typed))


@dataclass(slots=True)
class ModelInput:
    """One request's input, ready for `predict`, and how to answer it."""

    data: Any
    params: dict[str, Any] | None
    wrapped: bool  # answer {"predictions": ...} (MLflow 2/3) rather than the bare 1.x/Azure shape
    rows: int | None = None  # length along the batch axis, None when it cannot join a batch
    batch_key: Hashable | None = None  # inputs with equal keys can be concatenated


@dataclass(slots=True)
class Table:
    """Rows of a DataFrame not built yet: a batch builds one frame for all its requests."""

    columns: list[str]
    data: list[list[Any]]
    # The Python types in each column. Rows join only rows of the same types, so pandas
    # infers the same dtypes for a batch as for each request alone.
    types: tuple[frozenset[type], ...]


# The JSON scalars whose column dtype pandas infers the same from any mix of rows.
_SCALARS = frozenset({int, float, str, bool, type(None)})
_NUMBERS = frozenset({int, float})


def parse(body: bytes, content_type: str | None, spec: ModelSpec) -> ModelInput:
    """Parse one scoring request; raises InvalidInput or UnsupportedMediaType."""
    mime, options = _split_content_type(content_type)
    try:
        if mime == JSON:
            model_input = _parse_json(body, options.get("format"), spec)
        elif mime == CSV:
            model_input = ModelInput(_parse_csv(body, spec.input_schema), None, wrapped=True)
        else:
            model_input = ModelInput(_parse_parquet(body), None, wrapped=True)
    except MlflowException as e:
        raise InvalidInput(e.message) from None
    model_input.rows, model_input.batch_key = _batch_shape(model_input.data, model_input.params)
    return model_input


def render(predictions: Any, wrapped: bool) -> bytes:
    """Predictions as JSON, as MLflow renders them, in the shape the request was sent in."""
    jsonable = _get_jsonable_obj(predictions, pandas_orient="records")
    return orjson.dumps(
        {"predictions": jsonable} if wrapped else jsonable, default=_fallback, option=_JSON_OPTIONS
    )


class FrameBuilder:
    """Builds what `predict` is given: a Table becomes the DataFrame MLflow would build."""

    def __init__(self, spec: ModelSpec) -> None:
        schema = self.schema = spec.input_schema
        self._doubles = frozenset(
            column.name
            for column in (schema.inputs if schema is not None and schema.has_input_names() else [])
            if isinstance(column, ColSpec) and column.type == DataType.double
        )

    def __call__(self, data: Any) -> Any:
        if not isinstance(data, Table):
            return data
        if self._doubles.issuperset(data.columns) and all(t <= _NUMBERS for t in data.types):
            # MLflow builds the frame and casts each column to float64; numbers go straight
            # into one float64 array, with the same values, many times faster.
            return pd.DataFrame(np.array(data.data, dtype=np.float64), columns=data.columns)
        try:
            return _dataframe({"columns": data.columns, "data": data.data}, "split", self.schema)
        except MlflowException as e:
            raise InvalidInput(e.message) from None


def _split_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        raise UnsupportedMediaType(
            f"Missing Content-Type header. Send one of {', '.join(CONTENT_TYPES)}, "
            "for example -H 'Content-Type: application/json'."
        )
    mime, *pairs = (part.strip() for part in content_type.split(";"))
    mime = mime.lower()
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key.strip().lower()] = value.strip().strip('"')
    if mime not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type '{content_type}'. Send one of {', '.join(CONTENT_TYPES)}."
        )
    if options.get("charset", "utf-8").lower() != "utf-8":
        raise UnsupportedMediaType(
            f"Unsupported charset '{options['charset']}'. Encode the body as UTF-8."
        )
    known = {"charset", "format"} if mime == JSON else {"charset"}
    if set(options) - known or options.get("format", "pandas-split") not in LEGACY_FORMATS:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type parameters in '{content_type}'. Known are charset=utf-8 "
            f"and, for JSON, format={' or format='.join(LEGACY_FORMATS)}."
        )
    return mime, options


def _load_json(body: bytes) -> Any:
    try:
        value = orjson.loads(body)
        if isinstance(value, str):
            # Published client examples send json.dumps(json.dumps(payload)): decode once more.
            value = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"The body is not valid JSON: {e}. {EXPECTED_JSON}") from None
    return value


def _parse_json(body: bytes, legacy_format: str | None, spec: ModelSpec) -> ModelInput:
    value = _load_json(body)
    if legacy_format is not None and not _is_mlflow_body(value):
        orient = LEGACY_FORMATS[legacy_format]
        return ModelInput(_frame(value, orient, spec), None, wrapped=False)
    if isinstance(value, list):
        # MLflow 1.x: a bare list of records.
        return ModelInput(_frame(value, "records", spec), None, wrapped=False)
    if not isinstance(value, dict):
        raise InvalidInput(f"Expected a JSON object, got {type(value).__name__}. {EXPECTED_JSON}")
    if "input_data" in value:
        return _parse_azure(value, spec)
    if "data" in value and not _is_mlflow_body(value):
        # MLflow 1.x: a bare {"columns", "index", "data"} in pandas' split orientation.
        return ModelInput(_frame(value, "split", spec), None, wrapped=False)
    return _parse_mlflow(value, spec)


def _is_mlflow_body(value: Any) -> bool:
    return isinstance(value, dict) and any(key in value for key in MLFLOW_KEYS)


def _params(value: dict) -> dict[str, Any] | None:
    params = value.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(
            f"'params' must be a JSON object of parameter names to values, got {params!r}."
        )
    return params


def _parse_mlflow(value: dict, spec: ModelSpec) -> ModelInput:
    """MLflow 2/3 JSON, dispatched as MLflow's `scoring_server._parse_json_data` does."""
    params = _params(value)
    if is_unified_llm_input(value):
        return _parse_llm(value, spec)
    input_keys = [key for key in MLFLOW_KEYS if key in value]
    if len(input_keys) != 1:
        raise InvalidInput(f"Got the fields {sorted(value)}. {EXPECTED_JSON}")
    key = input_keys[0]
    if spec.typed_inputs:
        if key != "inputs":
            raise InvalidInput(
                "This model's signature comes from type hints, so it takes its input as sent, "
                f"in the field 'inputs'; got '{key}'. Send {{\"inputs\": ...}}."
            )
        return ModelInput(value["inputs"], params, wrapped=True)
    if key.startswith("dataframe_"):
        orient = key.removeprefix("dataframe_")
        return ModelInput(_frame(value[key], orient, spec), params, wrapped=True)
    data = scoring_server.infer_and_parse_data({key: value[key]}, spec.input_schema)
    return ModelInput(data, params, wrapped=True)


def _parse_llm(value: dict, spec: ModelSpec) -> ModelInput:
    """Chat, completions and embeddings requests ({"messages" | "prompt" | "input", ...}).

    As MLflow does: the fields the params schema names are params, every other field is the
    input, passed as sent; the answer is not wrapped in {"predictions": ...}.
    """
    names = {param.name for param in spec.params_schema.params} if spec.params_schema else set()
    data = {key: field for key, field in value.items() if key not in names}
    params = {key: field for key, field in value.items() if key in names}
    return ModelInput(data, params, wrapped=False)


def _parse_azure(value: dict, spec: ModelSpec) -> ModelInput:
    """Azure ML's wrapper: {"input_data": <pandas split dict | tensor>, "params": {...}}."""
    unknown = set(value) - {"input_data", "params"}
    if unknown:
        raise InvalidInput(
            f"Unexpected fields {sorted(unknown)} beside 'input_data'. Send "
            '{"input_data": {"columns": [...], "data": [[...]]}} or {"input_data": [[...]]}.'
        )
    data = value["input_data"]
    if isinstance(data, dict) and "data" in data and set(data) <= {"columns", "index", "data"}:
        return ModelInput(_frame(data, "split", spec), _params(value), wrapped=False)
    parsed = _parse_mlflow({"inputs": data, "params": value.get("params")}, spec)
    parsed.wrapped = False
    return parsed


def _frame(value: Any, orient: str, spec: ModelSpec) -> Table | pd.DataFrame:
    """A Table when the rows are plain enough to be joined with others, else MLflow's frame."""
    table = _table(value, orient)
    return table if table is not None else _dataframe(value, orient, spec.input_schema)


def _table(value: Any, orient: str) -> Table | None:
    if orient == "split":
        if not (isinstance(value, dict) and value.keys() - {"index"} == {"columns", "data"}):
            return None
        columns, data = value["columns"], value["data"]
        if not (isinstance(columns, list) and isinstance(data, list)):
            return None
        if value.get("index", positions := _positions(data)) != positions:
            return None  # a meaningful index must reach the model as sent
        if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
            return None
    else:
        if not (isinstance(value, list) and value and isinstance(value[0], dict)):
            return None
        columns = list(value[0])
        if not all(isinstance(record, dict) and list(record) == columns for record in value):
            return None
        data = [list(record.values()) for record in value]
    if not (data and columns and all(isinstance(column, str) for column in columns)):
        return None
    types = tuple(frozenset(map(type, column)) for column in zip(*data, strict=True))
    if not all(_SCALARS.issuperset(column_types) for column_types in types):
        return None
    return Table(columns, data, types)


def _positions(rows: list) -> list[int]:
    """The index pandas gives rows by default, which clients often send along."""
    return list(range(len(rows)))


def _dataframe(value: Any, orient: str, schema: Schema | None) -> pd.DataFrame:
    return scoring_server.infer_and_parse_data({f"dataframe_{orient}": value}, schema)


def _parse_csv(body: bytes, schema: Schema | None) -> pd.DataFrame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"The CSV body is not valid UTF-8: {e}") from None
    return scoring_server.parse_csv_input(StringIO(text), schema)


def _parse_parquet(body: bytes) -> pd.DataFrame:
    return scoring_server.parse_parquet_input(BytesIO(body))


def _batch_shape(data: Any, params: dict | None) -> tuple[int | None, Hashable | None]:
    """How many rows `data` has and what it must share with others to be predicted together."""
    params_key = orjson.dumps(params, option=orjson.OPT_SORT_KEYS) if params else None
    if isinstance(data, Table):
        return len(data.data), ("table", tuple(data.columns), data.types, params_key)
    if isinstance(data, pd.DataFrame):
        if not data.index.equals(pd.RangeIndex(len(data))):
            return None, None  # a meaningful index must reach the model as sent
        shape = (tuple(data.columns), tuple(str(t) for t in data.dtypes))
        return len(data), ("frame", shape, params_key)
    if isinstance(data, np.ndarray) and data.ndim >= 1:
        return len(data), ("array", data.dtype.str, data.shape[1:], params_key)
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, np.ndarray) and v.ndim >= 1 for v in data.values())
    ):
        lengths = {len(v) for v in data.values()}
        if len(lengths) == 1:
            shape = tuple((k, v.dtype.str, v.shape[1:]) for k, v in data.items())
            return lengths.pop(), ("tensors", shape, params_key)
    return None, None
