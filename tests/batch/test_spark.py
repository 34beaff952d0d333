"""`--engine spark`: a job scored through mlflow.pyfunc.spark_udf on Spark in local mode.

Its output must be what the local engine writes: the input's rows in input order, their
columns, then the predictions. The first test runs both engines on the same input; the others
check against what a user would compute by hand, the model's `predict` over the same input.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from support import FEATURES

from modelhost.batch.spark import BatchFailed, BatchJob, run_spark, spark_session, udf_env_manager
from modelhost.config import EnvManager

JAVA_PACKAGE = "openjdk-17-jre-headless"  # what Spark 4 needs, from Debian's packages
APT_TIMEOUT_S = 900
WORKERS = 1  # one Python worker to start: the machine is shared
FRAME_OUTPUT = Path(__file__).parents[1] / "toys" / "frame_output.py"


class Recorded:
    """A progress that remembers what the engine told it."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.started = False
        self.rows = 0

    def start(self, total_rows: int | None) -> None:
        self.started, self.total = True, total_rows

    def advance(self, rows: int, failed: int = 0) -> None:
        assert rows >= 0 and failed == 0
        self.rows += rows


@pytest.fixture(scope="module")
def java() -> str:
    """The `java` Spark starts, installed from Debian's packages when the machine has none."""
    found = shutil.which("java")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"Install Java 17 for the Spark tests: `apt-get install -y {JAVA_PACKAGE}`.")
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", JAVA_PACKAGE]):
        done = subprocess.run(command, env=quiet, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    found = shutil.which("java")
    assert found, f"apt-get installed {JAVA_PACKAGE}, yet no java is on PATH"
    return found


@pytest.fixture(scope="module")
def spark(java) -> Iterator[object]:
    """One Spark session (one JVM) for the module's jobs, as the engine sets one up."""
    with spark_session(f"local[{WORKERS}]") as session:
        yield session


def score(spark, model: Path, input: Path, output: Path, **options) -> tuple[object, Recorded]:
    progress = Recorded()
    job = BatchJob(str(model), str(input), str(output), engine="spark", workers=WORKERS, **options)
    return run_spark(job, progress, spark=spark), progress


def by_hand(model: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The input with the model's predictions beside it, as the local engine writes it."""
    predictions = mlflow.pyfunc.load_model(str(model)).predict(frame)
    if isinstance(predictions, pd.DataFrame):
        return pd.concat([frame, predictions.set_index(frame.index)], axis=1)
    return frame.assign(prediction=predictions)


def parts(output: Path, suffix: str) -> list[Path]:
    """The output's data files in name order: the order readers take them in."""
    return sorted(p for p in output.iterdir() if p.name.startswith("part-") and p.suffix == suffix)


def numbered(iris: pd.DataFrame, copies: int) -> pd.DataFrame:
    """Iris `copies` times over, each row changed a little so that every row is its own."""
    frame = pd.concat([iris] * copies, ignore_index=True)
    return frame.add(frame.index.to_series() / 10_000, axis=0)


def test_parquet_files_come_back_scored_in_input_order(spark, model_paths, iris, tmp_path):
    model = model_paths["forest_regressor"]
    inputs = tmp_path / "input"
    inputs.mkdir()
    frame = numbered(iris, 4)
    # The first file is the smaller: Spark reading both at once would read the larger first.
    frame.iloc[:100].to_parquet(inputs / "a.parquet")
    frame.iloc[100:].to_parquet(inputs / "b.parquet")

    summary, progress = score(spark, model, inputs, tmp_path / "scored")
    local = subprocess.run(
        [sys.executable, "-m", "modelhost", "batch", str(model), "--input", str(inputs),
         "--output", str(tmp_path / "local"), "--engine", "local", "--env-manager", "local",
         "--chunk-rows", "150"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr

    scored = pd.read_parquet(tmp_path / "scored")
    pd.testing.assert_frame_equal(scored, pd.read_parquet(tmp_path / "local"))
    pd.testing.assert_frame_equal(scored, by_hand(model, frame))
    assert summary.rows == len(frame) and summary.rows_failed == 0
    assert json.loads((tmp_path / "scored" / "_SUCCESS").read_text())["rows"] == len(frame)
    assert (progress.started, progress.total, progress.rows) == (True, len(frame), len(frame))


def test_a_frame_output_becomes_one_csv_column_per_field(spark, model_paths, iris, tmp_path):
    model = model_paths["frame_output"]
    frame = numbered(iris, 2)
    frame.to_csv(tmp_path / "input.csv", index=False)

    summary, progress = score(spark, model, tmp_path / "input.csv", tmp_path / "scored.csv")

    written = pd.concat([pd.read_csv(p) for p in parts(tmp_path / "scored.csv", ".csv")])
    expected = by_hand(model, frame)
    assert list(written.columns) == [*FEATURES, "label", "score"]
    pd.testing.assert_frame_equal(
        written.reset_index(drop=True), expected, check_dtype=False, check_exact=False
    )
    assert set(written["label"]) == {"big", "small"}
    assert summary.rows == len(frame)
    assert (progress.total, progress.rows) == (None, len(frame))  # a CSV's rows are not known


def test_json_lines_keep_their_column_order(spark, model_paths, iris, tmp_path):
    # Without an output schema, what the model returns is seen on the first rows: a frame.
    model = tmp_path / "unsigned"
    mlflow.pyfunc.save_model(
        model, python_model=str(FRAME_OUTPUT), pip_requirements=["mlflow", "pandas"]
    )
    frame = numbered(iris, 1)
    frame.to_json(tmp_path / "input.jsonl", orient="records", lines=True)

    score(spark, model, tmp_path / "input.jsonl", tmp_path / "scored", output_format="jsonl")

    written = pd.concat(
        [pd.read_json(p, lines=True) for p in parts(tmp_path / "scored", ".json")],
        ignore_index=True,
    )
    # Spark's JSON reader sorts the keys; iris's own order is not sorted.
    assert list(written.columns) == [*FEATURES, "label", "score"]
    pd.testing.assert_frame_equal(written, by_hand(model, frame), check_exact=False)


def test_a_finished_output_is_kept_and_another_jobs_refused(spark, model_paths, iris, tmp_path):
    frame = numbered(iris, 1)
    frame.to_parquet(tmp_path / "input.parquet")
    first, _ = score(spark, model_paths["classifier"], tmp_path / "input.parquet", tmp_path / "o")
    written = {p.name: p.stat().st_mtime_ns for p in parts(tmp_path / "o", ".parquet")}

    again, progress = score(spark, model_paths["classifier"], tmp_path / "input.parquet",
                            tmp_path / "o")  # fmt: skip

    assert again.rows == first.rows == len(frame) and progress.rows == len(frame)
    expected = by_hand(model_paths["classifier"], frame)  # class numbers: Spark longs
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o"), expected)
    assert {p.name: p.stat().st_mtime_ns for p in parts(tmp_path / "o", ".parquet")} == written
    with pytest.raises(BatchFailed, match="holds the output of another job"):
        score(spark, model_paths["forest_regressor"], tmp_path / "input.parquet", tmp_path / "o")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a job's")
    with pytest.raises(BatchFailed, match="not the output of a batch job"):
        score(spark, model_paths["classifier"], tmp_path / "input.parquet", tmp_path / "mine")


def test_bad_data_fails_with_the_models_own_words(spark, model_paths, iris, tmp_path):
    frame = numbered(iris, 1).astype({FEATURES[1]: object})
    frame.loc[7, FEATURES[1]] = "three"
    frame.to_csv(tmp_path / "input.csv", index=False)

    with pytest.raises(BatchFailed) as failed:
        score(spark, model_paths["forest_regressor"], tmp_path / "input.csv", tmp_path / "o")

    message = failed.value.message
    assert f"Incompatible input types for column {FEATURES[1]}" in message, message
    assert "Traceback" not in message and "org.apache" not in message, message
    assert "5.1" not in message, f"the input quoted in the message: {message}"
    assert not parts(tmp_path / "o", ".parquet") and not (tmp_path / "o" / "_SUCCESS").exists()


def test_a_malformed_line_fails_with_what_is_wrong_with_it(spark, model_paths, tmp_path):
    (tmp_path / "input.jsonl").write_text('{"x": 1.0}\n{"x": 2.0\n')

    with pytest.raises(BatchFailed) as failed:
        score(spark, model_paths["fragile"], tmp_path / "input.jsonl", tmp_path / "o")

    message = failed.value.message
    assert "Malformed records" in message and "end-of-input" in message, message
    assert "\tat " not in message and "SQLSTATE" not in message, message


def test_an_error_threshold_is_refused_with_what_to_do(spark, model_paths, tmp_path):
    with pytest.raises(BatchFailed, match="--engine local"):
        score(spark, model_paths["classifier"], tmp_path, tmp_path / "o", error_threshold=10)


def test_the_model_runs_in_this_python_only_when_it_may(model_paths, tmp_path):
    model = model_paths["classifier"]
    assert udf_env_manager(EnvManager.AUTO, model) == "local"  # this Python has what it needs
    assert udf_env_manager(EnvManager.LOCAL, model) == "local"
    assert udf_env_manager(EnvManager.UV, model) == "uv"
    needy = shutil.copytree(model, tmp_path / "needy")
    (needy / "requirements.txt").write_text("mlflow\nscikit-learn==0.20.4\n")
    assert udf_env_manager(EnvManager.AUTO, needy) == "uv"
    assert udf_env_manager(EnvManager.LOCAL, needy) == "local"  # as the user asked
