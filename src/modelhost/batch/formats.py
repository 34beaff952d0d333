"""Reading inputs chunk by chunk, and writing output parts, in the formats batch jobs take.

The reading is split in two. The job's main process only cuts a file into chunks of rows, as
cheaply as it can (Arrow record batches of a Parquet file; the raw lines of CSV and JSON Lines),
and the scoring processes turn a chunk into the DataFrame the model gets, with MLflow's own
readers as the model server uses them: `pandas.read_parquet`'s conversion for Parquet, MLflow's
`parse_csv_input` (the schema's dtypes) for CSV, and `dataframe_records` for JSON Lines. So bad
data fails its chunk only, with the same message the model server would give.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.types import Schema

from modelhost.errors import InvalidInput

# Reading a Parquet file through a small buffer keeps memory to the chunk being read, however
# large the file's row groups are.
_PARQUET_BUFFER = 1 << 20


@dataclass(slots=True)
class Chunk:
    """Rows [start, start + rows) of input file number `file`: its chunk number `index`."""

    file: int
    index: int
    start: int
    rows: int
    data: Any  # a pyarrow RecordBatch (parquet), or raw lines (csv: header first; jsonl)


# Text inputs up to this size are counted (a scan for line ends) to show the time left.
COUNT_TEXT_BYTES = 1 << 30


def count_rows(files: list[Path], fmt: str) -> int | None:
    """The input's rows: from Parquet footers; for text, its lines when the input is small
    enough to scan (an estimate: blank lines and line breaks inside quotes count)."""
    if fmt == "parquet":
        return sum(pq.read_metadata(file).num_rows for file in files)
    if sum(file.stat().st_size for file in files) > COUNT_TEXT_BYTES:
        return None
    return sum(_lines(file) - (fmt == "csv") for file in files)


def _lines(file: Path) -> int:
    count, last = 0, b"\n"
    with open(file, "rb") as text:
        while block := text.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")  # a last line with no line end


def read_chunks(file: Path, number: int, fmt: str, chunk_rows: int) -> Iterator[Chunk]:
    """The chunks of one input file, in order; the same chunks each time it is read."""
    if fmt == "parquet":
        batches = _parquet_batches(file, chunk_rows)
    else:
        batches = _line_batches(file, chunk_rows, header=fmt == "csv")
    start = 0
    try:
        for index, (rows, data) in enumerate(batches):
            yield Chunk(number, index, start, rows, data)
            start += rows
    except (OSError, ValueError, pa.ArrowException) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(
            f"Cannot read {file} as {fmt} after its row {start}: {e}. Check the file, or pass "
            "--input-format if it is not " + fmt + "."
        ) from None


def _parquet_batches(file: Path, chunk_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    parquet = pq.ParquetFile(file, buffer_size=_PARQUET_BUFFER, pre_buffer=False)
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows, use_threads=False):
            yield batch.num_rows, batch
    finally:
        parquet.close()


def _line_batches(file: Path, chunk_rows: int, header: bool) -> Iterator[tuple[int, list[str]]]:
    """Records of `chunk_rows` lines; a CSV record may span lines inside double quotes."""
    with open(file, encoding="utf-8", newline="") as lines:
        head = _record(lines) if header else None
        if header and head is None:
            return
        batch: list[str] = []
        while (record := _record(lines)) is not None:
            if not record.strip():
                continue  # pandas skips blank lines; so do the row numbers
            batch.append(record)
            if len(batch) == chunk_rows:
                yield len(batch), [head, *batch] if header else batch
                batch = []
        if batch:
            yield len(batch), [head, *batch] if header else batch


def _record(lines: Any) -> str | None:
    line = lines.readline()
    if not line:
        return None
    # An odd number of quotes leaves a quoted field open: the record goes on on the next line.
    while line.count('"') % 2 and (more := lines.readline()):
        line += more
    return line


def decode(
    chunk_data: Any, fmt: str, schema: Schema | None, start: int = 0, stop: int | None = None
) -> pd.DataFrame:
    """Rows [start, stop) of a chunk as the DataFrame the model server would build of them."""
    if fmt == "parquet":
        batch: pa.RecordBatch = chunk_data
        if start or stop is not None:
            batch = batch.slice(start, (stop if stop is not None else batch.num_rows) - start)
        return batch.to_pandas()
    if fmt == "csv":
        head, *records = chunk_data
        return _parse_csv([head, *records[start:stop]], schema)
    return _parse_jsonl(chunk_data[start:stop], schema)


def _parse_csv(records: list[str], schema: Schema | None) -> pd.DataFrame:
    try:
        return scoring_server.parse_csv_input(StringIO("".join(records)), schema)
    except MlflowException as e:
        raise InvalidInput(e.message) from None


def _parse_jsonl(lines: list[str], schema: Schema | None) -> pd.DataFrame:
    records = []
    for line in lines:
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"A line is not valid JSON: {e}") from None
        if not isinstance(records[-1], dict):
            raise InvalidInput(
                f"A line holds {type(records[-1]).__name__}, not a JSON object: each line must "
                'be one record, like {"x": 1.0, "y": "a"}.'
            )
    try:
        return scoring_server.infer_and_parse_data({"dataframe_records": records}, schema)
    except MlflowException as e:
        raise InvalidInput(e.message) from None


def raw_rows(chunk_data: Any, fmt: str) -> list[Any]:
    """The chunk's rows as they were read, for the errors file."""
    if fmt == "parquet":
        from mlflow.utils.proto_json_utils import _get_jsonable_obj

        return _get_jsonable_obj(chunk_data.to_pandas(), pandas_orient="records")
    records = chunk_data[1:] if fmt == "csv" else chunk_data
    return [record.rstrip("\r\n") for record in records]


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary encoding: not floats, which seldom repeat. Trying them costs
    a part most of its writing time, to end up larger than plain encoding."""
    return [field.name for field in table.schema if not pa.types.is_floating(field.type)]


def write_part(frame: pd.DataFrame | pa.Table, path: Path, fmt: str) -> None:
    """Write a part under a dot-prefixed name, then rename it: never a half-written part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame)
            pq.write_table(table, temporary, use_dictionary=_dictionary_columns(table))
        elif fmt == "csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_json(temporary, orient="records", lines=True)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
