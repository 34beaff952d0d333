"""Scoring one chunk: its rows as the model server would parse them, their predictions beside
them; and, when it fails, which row and column are to blame."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.types import Schema

from modelhost.batch.formats import Chunk, decode, raw_rows
from modelhost.errors import InvalidInput, ModelFailed, ModelhostError
from modelhost.worker.model import ServedModel

PREDICTION = "prediction"
# How MLflow's schema enforcement names a column in its messages.
_COLUMN = re.compile(r"for column '?([^'\n]+?)'?\. ")
_MISSING = re.compile(r"missing inputs \[(.*?)\]")


class ChunkFailed(Exception):
    """A chunk's rows could not be scored; `entry` is its line of the errors file."""

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(entry["message"])
        self.entry = entry


def score(model: ServedModel, chunk: Chunk, fmt: str, output_fmt: str, file: str) -> Any:
    """The chunk's input columns and its predictions, ready to write; raises ChunkFailed."""
    schema = model.spec.input_schema
    try:
        frame = decode(chunk.data, fmt, schema)
        return writable(with_predictions(frame, model.predict(frame, None)), output_fmt)
    except ModelhostError as e:
        raise ChunkFailed(_failure(model, chunk, fmt, output_fmt, file, e)) from None


def writable(frame: pd.DataFrame, output_fmt: str) -> pd.DataFrame | pa.Table:
    """What write_part takes; the Arrow table of a Parquet part is built here, so that a
    failure to convert the predictions fails their chunk."""
    if output_fmt != "parquet":
        return frame
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise ModelFailed(f"The predictions cannot be written as Parquet: {e}") from None


def with_predictions(frame: pd.DataFrame, predictions: Any) -> pd.DataFrame:
    """The input columns, then `prediction` or one column per field of a frame's output."""
    columns = _prediction_columns(predictions)
    for name, values in columns.items():
        if len(values) != len(frame):
            raise ModelFailed(
                f"The model returned {len(values)} predictions for {len(frame)} rows: batch "
                "scoring needs one prediction per input row."
            )
        if name in frame.columns:
            raise ModelFailed(
                f"The model's output field '{name}' has the name of an input column: rename "
                "one of them."
            )
    frame = frame.reset_index(drop=True)
    return frame.assign(**columns) if columns else frame


def _prediction_columns(predictions: Any) -> dict[str, Any]:
    if isinstance(predictions, pd.DataFrame):
        return {str(name): predictions[name].to_numpy() for name in predictions.columns}
    if isinstance(predictions, pd.Series):
        return {PREDICTION: predictions.to_numpy()}
    if isinstance(predictions, dict):
        return {str(name): _column(values) for name, values in predictions.items()}
    if isinstance(predictions, np.ndarray | list | tuple):
        return {PREDICTION: _column(predictions)}
    raise ModelFailed(
        f"The model returned {type(predictions).__name__}, not one prediction per row: batch "
        "scoring needs a list, an array, a Series or a DataFrame."
    )


def _column(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.ndim > 1:
        # Each row's prediction is a list: a 2-D array's rows, or nested lists beyond.
        return list(values) if values.ndim == 2 else values.tolist()
    if isinstance(values, pd.Series):
        return values.to_numpy()
    if np.ndim(values) == 0:
        raise ModelFailed(
            f"The model returned the single value {values!r} for a field, not one per row."
        )
    return values


def _failure(
    model: ServedModel,
    chunk: Chunk,
    fmt: str,
    output_fmt: str,
    file: str,
    error: ModelhostError,
) -> dict[str, Any]:
    """The errors file's line for a failed chunk: where, which row and column, and why."""
    schema = model.spec.input_schema
    offset = None
    if not _MISSING.search(error.message):
        offset = _first_failing_row(model, chunk, fmt, output_fmt)
    column = _blamed_column(error.message, schema)
    if column is None and offset is not None and fmt == "csv" and schema is not None:
        column = _csv_column(chunk.data, offset, schema)
    stop = chunk.start + chunk.rows
    return {
        "file": file,
        "file_number": chunk.file,
        "chunk": chunk.index,
        "rows": [chunk.start, stop],
        "row": None if offset is None else chunk.start + offset,
        "column": column,
        "error_code": error.error_code,
        "message": _without_data(error.message, schema),
        "input": raw_rows(chunk.data, fmt),
    }


def describe(entry: dict[str, Any]) -> str:
    """A failed chunk in a sentence: the file, the row range, the row and column to blame."""
    start, stop = entry["rows"]
    where = [f"rows {start}-{stop - 1}"]
    if entry["row"] is not None:
        where.append(f"first failing row {entry['row']}")
    if entry["column"] is not None:
        where.append(f"column '{entry['column']}'")
    return f"{entry['file']}, {', '.join(where)}: {entry['message']}"


def _first_failing_row(model: ServedModel, chunk: Chunk, fmt: str, output_fmt: str) -> int | None:
    """Halve the chunk down to its first row that fails alone; None if no row fails alone.

    Each step predicts on half of the rows before it: about the cost of scoring the chunk twice.
    """
    schema = model.spec.input_schema

    def fails(start: int, stop: int) -> bool:
        try:
            frame = decode(chunk.data, fmt, schema, start, stop)
            writable(with_predictions(frame, model.pyfunc.predict(frame)), output_fmt)
        except Exception:  # any failure: the model's own and MLflow's both count here
            return True
        return False

    low, high = 0, chunk.rows
    while high - low > 1:
        middle = (low + high) // 2
        if fails(low, middle):
            high = middle
        elif fails(middle, high):
            low = middle
        else:
            return None  # only rows of both halves together fail
    return low if high - low == 1 and fails(low, high) else None


def _without_data(message: str, schema: Schema | None) -> str:
    """MLflow's schema errors quote the chunk's whole data before saying what is wrong: keep
    what is wrong. The rows are in the errors file; a job's message is shown and logged."""
    marker = f"' with schema '{schema}'. Error: "
    if message.startswith("Failed to enforce schema of data '") and marker in message:
        return message[message.index(marker) + len(marker) :]
    return message


def _blamed_column(message: str, schema: Schema | None) -> str | None:
    names = schema.input_names() if schema is not None and schema.has_input_names() else []
    match = _COLUMN.search(message)
    if match and (not names or match[1] in names):
        return match[1]
    missing = _MISSING.search(message)
    if missing:
        return missing[1].strip("'\" ").split("', '")[0]
    return None


def _csv_column(records: list[str], offset: int, schema: Schema) -> str | None:
    """The column of a CSV row whose text does not convert to the type the schema gives it."""
    if not schema.has_input_names():
        return None
    head, row = records[0], records[1 + offset]
    for spec in schema.inputs:
        try:
            decode([head, row], "csv", Schema([spec]))
        except InvalidInput:
            return spec.name
    return None
