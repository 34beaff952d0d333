"""Score one large Parquet file three ways, side by side: `modelhost batch`, the plain script a
user would write instead, and `mlflow.pyfunc.spark_udf` in Spark's local mode.

Trains the 50-tree random forest on iris, writes a few million iris-like rows to one Parquet
file, then times each way as a whole process (imports, model loading, reading, scoring and
writing), checks that all of them wrote the same predictions, and prints rows/s and the ratios.

    .venv/bin/python benchmarks/batch.py [--rows 5000000] [--workers 2] [--rounds 1]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

CHUNK_ROWS = 50_000  # what the plain script predicts at a time, and modelhost's chunk size

# What a user writes without modelhost: read the file, predict chunk by chunk, write.
PLAIN_SCRIPT = """\
import sys

import mlflow.pyfunc
import numpy as np
import pandas as pd

model_uri, source, target, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = mlflow.pyfunc.load_model(model_uri)
frame = pd.read_parquet(source)
predictions = [model.predict(frame.iloc[i : i + chunk]) for i in range(0, len(frame), chunk)]
frame["prediction"] = np.concatenate(predictions)
frame.to_parquet(target, index=False)
"""

# What a user writes on Spark: the model as a pandas UDF over a DataFrame, in local mode.
SPARK_SCRIPT = """\
import sys

import mlflow.pyfunc
from pyspark.sql import SparkSession

model_uri, source, target, workers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
spark = (
    SparkSession.builder.master(f"local[{workers}]")
    .config("spark.ui.enabled", "false")
    .config("spark.driver.host", "127.0.0.1")
    .config("spark.driver.bindAddress", "127.0.0.1")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
frame = spark.read.parquet(source)
predict = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="long", env_manager="local")
frame.withColumn("prediction", predict(*frame.columns)).write.mode("overwrite").parquet(target)
spark.stop()
"""


@dataclass
class Result:
    way: str
    seconds: float  # median over rounds
    rows_per_s: float


class BenchmarkError(Exception):
    """A failure that ends the run with a message rather than a traceback."""


def save_forest(directory: Path) -> Path:
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    path = directory / "forest"
    # skops refuses to load the forest's Tree type unless it is trusted explicitly.
    mlflow.sklearn.save_model(
        model, str(path), input_example=X.head(2), skops_trusted_types=["sklearn.tree._tree.Tree"]
    )
    return path


def write_input(path: Path, rows: int) -> None:
    """Iris measurements with noise, written in row groups of 100,000 rows."""
    X, _ = load_iris(return_X_y=True, as_frame=True)
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.Schema.from_pandas(X, preserve_index=False)) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            sample = X.iloc[rng.integers(0, len(X), n)].reset_index(drop=True)
            sample += rng.normal(0, 0.3, sample.shape)
            writer.write_table(pa.Table.from_pandas(sample, preserve_index=False))


def commands(model: Path, source: Path, scratch: Path, workers: int) -> dict[str, list[str]]:
    (scratch / "plain.py").write_text(PLAIN_SCRIPT)
    (scratch / "spark.py").write_text(SPARK_SCRIPT)
    python = sys.executable
    return {
        f"modelhost batch ({workers} workers)": [
            python, "-m", "modelhost", "batch", str(model), "--input", str(source),
            "--output", str(scratch / "out-modelhost"), "--workers", str(workers),
            "--chunk-rows", str(CHUNK_ROWS), "--env-manager", "local",
        ],
        "plain script": [
            python, str(scratch / "plain.py"), str(model), str(source),
            str(scratch / "out-plain.parquet"), str(CHUNK_ROWS),
        ],
        f"spark_udf (local[{workers}])": [
            python, str(scratch / "spark.py"), str(model), str(source),
            str(scratch / "out-spark"), str(workers),
        ],
    }  # fmt: skip


def outputs(scratch: Path) -> dict[str, Path]:
    return {
        "modelhost": scratch / "out-modelhost",
        "plain": scratch / "out-plain.parquet",
        "spark": scratch / "out-spark",
    }


def clear_outputs(scratch: Path) -> None:
    for path in outputs(scratch).values():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def timed(way: str, command: list[str], scratch: Path) -> float:
    log = scratch / "run.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BenchmarkError(f"{way} exited with {done.returncode}:\n{tail}")
    return seconds


def check_same_predictions(scratch: Path, rows: int) -> None:
    """Every way must have written every row with the forest's own predictions, in order."""
    paths = outputs(scratch)
    expected = pd.read_parquet(paths["plain"])["prediction"].to_numpy()
    if len(expected) != rows:
        raise BenchmarkError(f"the plain script wrote {len(expected)} rows of {rows}")
    for way in ("modelhost", "spark"):
        got = pd.read_parquet(paths[way])["prediction"].to_numpy()
        if len(got) != rows or not np.array_equal(got.astype(np.int64), expected):
            raise BenchmarkError(f"{way} wrote predictions that differ from the plain script's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each way, in turns")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="modelhost-batch-bench-"))
    try:
        model = save_forest(scratch)
        source = scratch / "input.parquet"
        write_input(source, args.rows)
        size_mb = source.stat().st_size / 1e6
        print(f"{args.rows:,} rows ({size_mb:.0f} MB of Parquet), 50-tree forest, {os.cpu_count()} "
              f"cores, {args.rounds} round(s)")  # fmt: skip
        ways = commands(model, source, scratch, args.workers)
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for round_ in range(args.rounds):
            clear_outputs(scratch)
            for way, command in ways.items():
                seconds[way].append(timed(way, command, scratch))
            if round_ == 0:
                check_same_predictions(scratch, args.rows)
        results = [
            Result(way, statistics.median(s), args.rows / statistics.median(s))
            for way, s in seconds.items()
        ]
    except BenchmarkError as e:
        sys.exit(f"benchmark failed: {e}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{'way':<28} {'seconds':>8} {'rows/s':>10}")
    for r in results:
        print(f"{r.way:<28} {r.seconds:>8.1f} {r.rows_per_s:>10,.0f}")
    ours, plain, spark = results
    print(
        textwrap.dedent(f"""\
        modelhost batch vs plain script: {ours.rows_per_s / plain.rows_per_s:.1f}x rows/s
        modelhost batch vs spark_udf:    {ours.rows_per_s / spark.rows_per_s:.1f}x rows/s""")
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
