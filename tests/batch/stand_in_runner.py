"""A stand-in for `modelhost batch run` in the jobs tests: the runner's contract, little else.

`modelhost up` runs it in place of the real runner when MODELHOST_BATCH_TEST_RUNNER names this
file. It scores CSV input as the toy sleeper model does (tests/toys/sleeper.py): each chunk
takes as long as its largest `seconds`, whose value is the prediction; input without that
column fails, naming the file, the rows and the column. It writes the output's parts and the
progress file as the batch contract says, and stops promptly on SIGTERM, exiting non-zero.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_uri")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--progress-file", required=True)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args, _ = parser.parse_known_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    progress = Progress(Path(args.progress_file))
    try:
        if not (Path(args.model_uri) / "MLmodel").is_file():
            raise Failed(f"{args.model_uri} is not an MLflow model (no MLmodel file).")
        files = _inputs(args.input)
        rows = [(file, row) for file in files for row in _read(file)]
        progress.total = len(rows)
        progress.write("RUNNING")
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        for number, start in enumerate(range(0, len(rows), args.chunk_rows)):
            chunk = rows[start : start + args.chunk_rows]
            _score(chunk, start, output / f"part-00000-{number:06d}.csv")
            progress.done += len(chunk)
            progress.write("RUNNING")
        (output / "_SUCCESS").write_text(json.dumps({"rows": len(rows), "rows_failed": 0}))
    except Failed as e:
        progress.write("FAILED", str(e))
        print(f"Error: {e}", file=sys.stderr)
        return 1
    progress.write("SUCCEEDED")
    return 0


class Failed(Exception):
    pass


class Progress:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.total: int | None = None
        self.done = 0
        self.started = time.monotonic()

    def write(self, state: str, message: str | None = None) -> None:
        seconds = max(time.monotonic() - self.started, 1e-6)
        report = {"state": state, "rows_done": self.done, "rows_total": self.total,
                  "rows_failed": 0, "rows_per_s": self.done / seconds, "message": message,
                  "errors_file": None, "updated": time.time()}  # fmt: skip
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps(report))
        os.replace(partial, self.path)


def _inputs(given: str) -> list[Path]:
    path = Path(given)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name[0] not in "_.")
    found = sorted(Path(p) for p in glob.glob(given) if Path(p).is_file())
    if not found:
        raise Failed(f"No file matches the input {given!r}.")
    return found


def _read(file: Path) -> list[dict[str, str]]:
    try:
        with open(file, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise Failed(f"Cannot read {file}: {e.strerror}.") from None


def _score(chunk: list[tuple[Path, dict[str, str]]], start: int, part: Path) -> None:
    file, first = chunk[0]
    if "seconds" not in first:
        raise Failed(
            f"{file}, rows {start} to {start + len(chunk) - 1}: the model needs a column "
            "'seconds', which the input lacks."
        )
    time.sleep(max(float(row["seconds"]) for _, row in chunk))
    partial = part.with_name(f".{part.name}")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, [*first, "prediction"])
        writer.writeheader()
        for _, row in chunk:
            writer.writerow({**row, "prediction": row["seconds"]})
    os.replace(partial, part)


if __name__ == "__main__":
    sys.exit(main())
