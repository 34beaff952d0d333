"""A job's output folder: its parts, what job wrote them, its errors and its end.

    OUTPUT/part-FFFFF-CCCCCC.<ext>  chunk C of input file F, renamed into place once whole
    OUTPUT/_job.json                 what job this is; another job may not write here
    OUTPUT/_errors.jsonl             failed chunks: their rows and the cause
    OUTPUT/_SUCCESS                  written last: rows, rows failed, seconds

Readers of the folder (pandas, pyarrow datasets, Spark) skip `_`- and `.`-prefixed files, and
the parts' names sort in input order.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from modelhost.batch.job import BatchFailed, BatchJob, Summary

JOB_FILE = "_job.json"
ERRORS_FILE = "_errors.jsonl"
SUCCESS_FILE = "_SUCCESS"
_PART = re.compile(r"^part-(\d{5})-(\d{6})\.\w+$")
# What makes two jobs the same job: a job with these equal resumes the other's output.
_IDENTITY = (
    "model_uri",
    "model",
    "inputs",
    "input_versions",
    "chunk_rows",
    "input_format",
    "output_format",
)


def part_name(file: int, chunk: int, fmt: str) -> str:
    return f"part-{file:05d}-{chunk:06d}.{fmt}"


def job_record(
    job: BatchJob,
    inputs: list[Path],
    input_fmt: str,
    output_fmt: str,
    model: dict[str, Any] | None,
) -> dict[str, Any]:
    """What `_job.json` says of a job; `model` names what the URI resolved to (run, model id)."""
    return {
        "model_uri": job.model_uri,
        "model": model,
        "inputs": [str(path) for path in inputs],
        # A file changed since (fixed data, say) makes another job: its old parts do not hold.
        "input_versions": [_version(path) for path in inputs],
        "chunk_rows": job.chunk_rows,
        "input_format": input_fmt,
        "output_format": output_fmt,
    }


class OutputFolder:
    """The output of one job; `claim` it before writing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.errors_file = self.path / ERRORS_FILE

    def check(self, record: dict[str, Any]) -> None:
        """Refuse an output another job wrote; fields of `record` that are None are not known
        yet (the model, before it is loaded) and not compared."""
        if self.path.exists() and not self.path.is_dir():
            raise BatchFailed(f"The output {self.path} is a file: name a folder to write parts in.")
        job_file = self.path / JOB_FILE
        if job_file.exists():
            found = json.loads(job_file.read_text())
            different = [
                key
                for key in _IDENTITY
                if record.get(key) is not None and found.get(key) != record[key]
            ]
            if different:
                raise BatchFailed(
                    f"The output {self.path} holds the parts of another job (its "
                    f"{', '.join(different)} differ{'s' if len(different) == 1 else ''}): "
                    "name a new output folder, or delete this one to start over."
                )
        elif self.path.is_dir() and any(self._parts()):
            raise BatchFailed(
                f"The output {self.path} holds parts but no {JOB_FILE}: it is not a batch "
                "job's output. Name a new output folder."
            )

    def claim(self, record: dict[str, Any]) -> None:
        """Make the folder this job's, or resume it: refused when another job wrote it."""
        self.check(record)
        self.path.mkdir(parents=True, exist_ok=True)
        job_file = self.path / JOB_FILE
        if not job_file.exists():
            write_atomically(job_file, json.dumps(record, indent=2))
        (self.path / SUCCESS_FILE).unlink(missing_ok=True)  # it is not done until it says so
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Parts a stopped job (or worker) was writing, under their temporary names."""
        for leftover in self.path.glob(".part-*.tmp"):
            leftover.unlink(missing_ok=True)

    def done_parts(self) -> set[tuple[int, int]]:
        """(file, chunk) of the parts written whole."""
        return set(self._parts())

    def failed_chunks(self) -> dict[tuple[int, int], dict[str, Any]]:
        """(file, chunk) -> the errors file's entry, for the chunks that failed before."""
        failed: dict[tuple[int, int], dict[str, Any]] = {}
        if not self.errors_file.exists():
            return failed
        with open(self.errors_file, "rb") as errors:
            for line in errors:
                try:
                    entry = json.loads(line)
                except ValueError:
                    break  # the end of a line a stopped job was writing
                failed[(entry["file_number"], entry["chunk"])] = entry
        return failed

    def add_errors(self, entry: dict[str, Any]) -> None:
        """Append one failed chunk; one write, so a stop leaves at most a torn last line."""
        line = json.dumps(entry, default=str) + "\n"
        with open(self.errors_file, "a", encoding="utf-8") as errors:
            errors.write(line)

    def trim_errors(self) -> None:
        """Drop a torn last line a stopped job left in the errors file."""
        if not self.errors_file.exists():
            return
        data = self.errors_file.read_bytes()
        if data and not data.endswith(b"\n"):
            self.errors_file.write_bytes(data[: data.rfind(b"\n") + 1])

    def finish(self, summary: Summary) -> None:
        """Say the job is done, last: `_SUCCESS` with its rows, rows failed and seconds."""
        record = {
            "rows": summary.rows,
            "rows_failed": summary.rows_failed,
            "seconds": round(summary.seconds, 3),
        }
        write_atomically(self.path / SUCCESS_FILE, json.dumps(record))

    def finished(self) -> Summary | None:
        """How the job that wrote this folder ended, if it did."""
        success = self.path / SUCCESS_FILE
        if not success.is_file():
            return None
        record = json.loads(success.read_text())
        return Summary(
            record["rows"], record["rows_failed"], record["seconds"], str(self.path), None
        )

    def _parts(self):
        for entry in os.scandir(self.path):
            match = _PART.match(entry.name)
            if match:
                yield int(match[1]), int(match[2])


def _version(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def write_atomically(path: Path, text: str) -> None:
    """`text` in `path`, whole or not at all, for readers that may look at any time."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
