"""Stand-in for batch/job.py while it is being written: the job description the engines share.

Only what the spark engine uses, with the names and behaviour the batch contract gives them.
Delete this file once batch/job.py is in, and import these names from there.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from modelhost.config import EnvManager
from modelhost.errors import InvalidInput, ModelhostError

FORMATS = ("parquet", "csv", "jsonl")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
             ".ndjson": "jsonl", ".json": "jsonl"}  # fmt: skip


class BatchFailed(ModelhostError):
    """The job stopped: bad input, a model that fails, options that do not go together."""


@dataclass(frozen=True)
class BatchJob:
    model_uri: str
    input: str
    output: str
    engine: str = "local"
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    chunk_rows: int = 50_000
    input_format: str | None = None
    output_format: str | None = None
    env_manager: EnvManager = EnvManager.AUTO
    error_threshold: int = 0
    spark_master: str | None = None
    progress_file: str | None = None


@dataclass(frozen=True)
class Summary:
    rows: int
    rows_failed: int
    seconds: float
    output: str
    errors_file: str | None


def resolve_inputs(job: BatchJob) -> list[Path]:
    path = Path(job.input).expanduser()
    if path.is_file():
        return [path.resolve()]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(s.startswith(("_", ".")) for s in p.relative_to(path).parts)
        )  # fmt: skip
        if not files:
            raise InvalidInput(f"The input folder {path} holds no data files.")
        return [p.resolve() for p in files]
    files = [Path(p).resolve() for p in sorted(glob.glob(str(path))) if Path(p).is_file()]
    if not files:
        raise InvalidInput(f"No file matches the input {job.input!r}.")
    return files


def input_format(job: BatchJob, files: list[Path]) -> str:
    if job.input_format is not None:
        return job.input_format
    found = {_SUFFIXES.get(file.suffix.lower()) for file in files}
    if len(found) != 1 or None in found:
        raise InvalidInput("Cannot tell the input's format from its names: pass --input-format.")
    return found.pop()  # type: ignore[return-value]


def output_format(job: BatchJob) -> str:
    if job.output_format is not None:
        return job.output_format
    return _SUFFIXES.get(Path(job.output).suffix.lower(), "parquet")
