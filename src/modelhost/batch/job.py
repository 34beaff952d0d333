"""A batch job: what to score with which model, where to write it, and how."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from modelhost.config import EnvManager
from modelhost.errors import InvalidInput, ModelhostError

FORMATS = ("parquet", "csv", "jsonl")
# What a file's name says of its format; `.json` files are taken as JSON Lines.
_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
JOB_ENV = "MODELHOST_BATCH_JOB"


class BatchFailed(ModelhostError):
    """The job stopped: bad input past the error threshold, a model that fails, bad options."""


def default_workers() -> int:
    """One scoring process per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class BatchJob:
    """One batch job, as the command line and the platform's job API describe it."""

    model_uri: str
    input: str  # a file, a folder or a glob
    output: str  # a folder (created); see batch/output.py
    engine: str = "local"  # "local" | "spark"
    workers: int = field(default_factory=default_workers)  # local engine: processes scoring
    chunk_rows: int = 50_000
    input_format: str | None = None  # one of FORMATS; None: guessed from the files' names
    output_format: str | None = None  # None: from the output's name (out.csv/...), else parquet
    env_manager: EnvManager = EnvManager.AUTO
    error_threshold: int = 0  # rows that may fail; -1: never stop
    spark_master: str | None = None  # None: local[*]
    progress_file: str | None = None  # see batch/progress.py

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_manager", EnvManager(self.env_manager))
        if self.engine not in ("local", "spark"):
            raise InvalidInput(f"Unknown engine '{self.engine}': use local or spark.")
        if self.workers < 1:
            raise InvalidInput(f"workers must be at least 1, got {self.workers}.")
        if self.chunk_rows < 1:
            raise InvalidInput(f"chunk_rows must be at least 1, got {self.chunk_rows}.")
        if self.error_threshold < -1:
            raise InvalidInput(
                f"error_threshold must be -1 (never stop) or a number of rows, "
                f"got {self.error_threshold}."
            )
        for name in ("input_format", "output_format"):
            value = getattr(self, name)
            if value is not None and value not in FORMATS:
                raise InvalidInput(f"Unknown {name} '{value}': use one of {', '.join(FORMATS)}.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BatchJob:
        return cls(**json.loads(text))

    def too_many_failed(self, rows_failed: int) -> bool:
        """Whether this many failed rows stop the job."""
        return self.error_threshold != -1 and rows_failed > self.error_threshold


@dataclass(frozen=True)
class Summary:
    """How a job ended."""

    rows: int
    rows_failed: int
    seconds: float
    output: str
    errors_file: str | None


def resolve_inputs(job: BatchJob) -> list[Path]:
    """The input files in input order: the file, the folder's files, or the glob's matches.

    A folder's files are those readers take as data: not `_`- or `.`-prefixed, in name order.
    """
    path = Path(job.input).expanduser()
    if path.is_file():
        return [path.resolve()]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
        if not files:
            raise InvalidInput(f"The input folder {path} holds no data files.")
        return [p.resolve() for p in files]
    if glob.has_magic(job.input):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p.resolve() for p in files if p.is_file()]
        if not files:
            raise InvalidInput(f"No file matches the input pattern {job.input!r}.")
        return files
    raise InvalidInput(
        f"The input {job.input!r} is neither a file, a folder nor a glob that matches."
    )


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in file.relative_to(root).parts)


def input_format(job: BatchJob, files: list[Path]) -> str:
    """The input's format: as given, or the one every file's name says."""
    if job.input_format is not None:
        return job.input_format
    found = {_SUFFIXES.get(_suffix(file)) for file in files}
    if None in found:
        unknown = next(file for file in files if _SUFFIXES.get(_suffix(file)) is None)
        raise InvalidInput(
            f"Cannot tell the format of {unknown} from its name: "
            f"pass --input-format {'|'.join(FORMATS)}."
        )
    if len(found) > 1:
        raise InvalidInput(
            f"The input files mix formats ({', '.join(sorted(found))}): score them apart, "
            "or pass --input-format."
        )
    return found.pop()


def output_format(job: BatchJob) -> str:
    """The output's format: as given, the one the output's name says (out.csv/), else parquet."""
    if job.output_format is not None:
        return job.output_format
    return _SUFFIXES.get(_suffix(Path(job.output)), "parquet")


def _suffix(path: Path) -> str:
    return path.suffix.lower()
