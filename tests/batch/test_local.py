"""`modelhost batch` with the local engine: real models, real files, real subprocesses."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from support import Job, batch_command, parts, run_batch, wait_for


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    output: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Inputs: iris in a folder of two Parquet files, and the toy models' bad data."""
    root = tmp_path_factory.mktemp("inputs")
    features, _ = load_iris(return_X_y=True, as_frame=True)
    (root / "iris").mkdir()
    features.iloc[:100].to_parquet(root / "iris" / "a.parquet")
    features.iloc[100:].to_parquet(root / "iris" / "b.parquet")
    (root / "iris" / "_notes.txt").write_text("not data: readers skip _ and . files")
    x = [f"{value:.1f}" for value in range(3000)]
    x[1234] = "abc"  # not a double: the fragile model's schema says x is one
    (root / "fragile.csv").write_text("x\n" + "\n".join(x) + "\n")
    # x = n + 0.5 for row n, negative in rows 25 and 71 (never 13, which the model answers oddly)
    lines = [json.dumps({"x": (-n if n in (25, 71) else n) + 0.5}) for n in range(100)]
    (root / "negatives.jsonl").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"seconds": [0.2] * 40}).to_parquet(root / "slow.parquet")
    _iris().drop(columns="sepal length (cm)").to_parquet(root / "partial.parquet")
    return root


@pytest.fixture(scope="module")
def registry(batch_models, tmp_path_factory) -> str:
    """A registry (a SQLite file) with the forest registered, version 1 aliased `champion`."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("forest")
    version = client.create_model_version("forest", source=str(batch_models["forest"]))
    client.set_registered_model_alias("forest", "champion", version.version)
    return uri


@pytest.fixture(scope="module")
def finished(batch_models, data, registry, tmp_path_factory) -> dict[str, Finished]:
    """The jobs that run to their end, started together (each spends seconds importing)."""
    out = tmp_path_factory.mktemp("outputs")
    iris = str(data / "iris")
    m = batch_models
    jobs = {
        "folder": ("models:/forest@champion", iris, "--workers", "2", "--chunk-rows", "40"),
        "lists": (m["probabilities"], iris, "--output-format", "jsonl", "--chunk-rows", "60"),
        "bad_csv": (m["fragile"], data / "fragile.csv", "--chunk-rows", "1000"),
        "missing_column": (m["forest"], data / "partial.parquet", "--workers", "1"),
        "threshold": (m["fragile"], data / "negatives.jsonl", "--chunk-rows", "10",
                      "--error-threshold", "-1", "--progress-file", str(out / "progress.json")),
        "over_threshold": (m["fragile"], data / "negatives.jsonl", "--chunk-rows", "10",
                           "--error-threshold", "15", "--workers", "1"),
    }  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "MLFLOW_REGISTRY_URI": registry}
    running = {}
    for name, (model, input_, *options) in jobs.items():
        output = out / name
        command = batch_command(
            model, "--input", str(input_), "--output", str(output), "--env-manager", "local",
            *options,
        )  # fmt: skip
        running[name] = (output, subprocess.Popen(command, env=env, **_pipes()))
    # One more on a terminal, whose progress bar is what a person would see; a glob for input.
    terminal, screen = pty.openpty()
    command = batch_command(
        m["frame_output"], "--input", f"{iris}/*.parquet", "--output", str(out / "frames.csv"),
        "--env-manager", "local", "--workers", "1",
    )  # fmt: skip
    on_terminal = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=screen)
    os.close(screen)
    drawn = _read_all(terminal)
    results = {}
    for name, (output, process) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = Finished(process.returncode, stdout, stderr, output)
    on_terminal.wait(timeout=300)
    drawn.join(timeout=30)
    results["frames"] = Finished(on_terminal.returncode, "", drawn.text, out / "frames.csv")
    return results


def _pipes() -> dict:
    return {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


class _Reader(threading.Thread):
    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.text = fd, ""

    def run(self) -> None:
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the terminal closed: the job ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self.fd)
        self.text = b"".join(chunks).decode(errors="replace")


def _read_all(fd: int) -> _Reader:
    reader = _Reader(fd)
    reader.start()
    return reader


def _iris() -> pd.DataFrame:
    return load_iris(as_frame=True).data


def _errors(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "_errors.jsonl").read_text().splitlines()]


def _ok(result: Finished) -> None:
    assert result.code == 0, result.stderr


def test_scores_a_folder_in_input_order(finished, batch_models):
    """The forest, as models:/forest@champion in a registry, over two files in chunks."""
    result = finished["folder"]
    _ok(result)
    scored = pd.read_parquet(result.output)
    expected = _iris()
    expected["prediction"] = mlflow.pyfunc.load_model(str(batch_models["forest"])).predict(expected)
    pd.testing.assert_frame_equal(scored, expected)
    # File 0 (100 rows) in chunks of 40, then file 1 (50 rows); nothing of the notes file.
    assert parts(result.output) == [
        "part-00000-000000.parquet", "part-00000-000001.parquet", "part-00000-000002.parquet",
        "part-00001-000000.parquet", "part-00001-000001.parquet",
    ]  # fmt: skip
    success = json.loads((result.output / "_SUCCESS").read_text())
    assert success["rows"] == 150 and success["rows_failed"] == 0
    assert "Scored 150 rows" in result.stdout

    job = json.loads((result.output / "_job.json").read_text())
    assert job["model_uri"] == "models:/forest@champion"
    assert job["model"]["model_uuid"]  # what the alias named when the job started


def test_a_missing_column_is_named_without_quoting_the_rows(finished, data):
    result = finished["missing_column"]
    assert result.code == 1
    message = result.stderr[result.stderr.index("Error: ") :]
    for words in (str(data / "partial.parquet"), "rows 0-149", "sepal length (cm)"):
        assert words in message, message
    # What is wrong and what the model expects; not MLflow's quote of all 150 rows.
    assert "Failed to enforce schema of data" not in message and "6.7" not in message, message


def test_a_frame_output_gives_a_column_per_field(finished):
    result = finished["frames"]
    _ok(result)
    assert all(name.endswith(".csv") for name in parts(result.output))
    scored = pd.concat(pd.read_csv(result.output / name) for name in parts(result.output))
    features = _iris()
    assert list(scored.columns) == [*features.columns, "label", "score"]
    total = features.sum(axis=1)
    np.testing.assert_allclose(scored["score"], total)
    assert list(scored["label"]) == ["big" if t > 10 else "small" for t in total]


def test_a_2d_output_gives_a_list_per_row(finished, batch_models):
    result = finished["lists"]
    _ok(result)
    assert all(name.endswith(".jsonl") for name in parts(result.output))
    scored = pd.concat(
        pd.read_json(result.output / name, lines=True) for name in parts(result.output)
    )
    expected = mlflow.pyfunc.load_model(str(batch_models["probabilities"])).predict(_iris())
    np.testing.assert_allclose(np.array(scored["prediction"].tolist()), expected)


def test_bad_data_names_the_file_the_rows_and_the_column(finished, data):
    result = finished["bad_csv"]
    assert result.code == 1
    message = result.stderr[result.stderr.index("Error: ") :]
    for words in (str(data / "fragile.csv"), "rows 1000-1999", "first failing row 1234",
                  "column 'x'", "--error-threshold"):  # fmt: skip
        assert words in message, message
    assert not (result.output / "_SUCCESS").exists()
    [entry] = _errors(result.output)
    assert (entry["rows"], entry["row"], entry["column"]) == ([1000, 2000], 1234, "x")
    assert entry["input"][234] == "abc"


def test_failed_rows_go_to_the_errors_file_up_to_the_threshold(finished, data):
    result = finished["threshold"]
    _ok(result)
    assert "20 failed" in result.stdout
    errors = _errors(result.output)
    assert sorted((e["rows"], e["row"]) for e in errors) == [([20, 30], 25), ([70, 80], 71)]
    assert all("x must not be negative" in e["message"] for e in errors)
    assert all(e["file"] == str(data / "negatives.jsonl") for e in errors)
    scored = pd.read_parquet(result.output)
    kept = [n for n in range(100) if not (20 <= n < 30 or 70 <= n < 80)]
    assert scored["x"].tolist() == [n + 0.5 for n in kept]
    assert scored["prediction"].tolist() == [2 * n + 1.0 for n in kept]
    assert json.loads((result.output / "_SUCCESS").read_text())["rows_failed"] == 20
    status = json.loads((result.output.parent / "progress.json").read_text())
    assert (status["state"], status["rows_done"], status["rows_failed"]) == ("SUCCEEDED", 100, 20)
    assert status["errors_file"] == str(result.output / "_errors.jsonl")

    stopped = finished["over_threshold"]
    assert stopped.code == 1
    assert "More than 15 rows failed (20 so far)" in stopped.stderr
    assert "rows 70-79" in stopped.stderr
    assert not (stopped.output / "_SUCCESS").exists()


def test_progress_bar_on_a_terminal(finished):
    result = finished["frames"]
    _ok(result)
    # One line redrawn in place: back to its start, the line, the rest of it cleared.
    bar = [line for line in result.stderr.split("\r") if line.endswith("\x1b[K")][-1]
    assert "100% 150/150 rows" in bar and "rows/s" in bar, result.stderr


def test_an_interrupted_job_resumes_to_the_same_result(batch_models, data, tmp_path):
    output = tmp_path / "resumed"
    options = ("--input", str(data / "slow.parquet"), "--output", str(output))
    options += ("--chunk-rows", "2", "--workers", "2")
    job = Job(batch_models["sleeper"], *options, log=tmp_path / "first.log")
    try:
        wait_for(lambda: len(parts(output)) >= 3, 120, "three parts")
        job.signal(signal.SIGKILL, group=True)
        job.wait(30)
    finally:
        job.stop()
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.glob("part-*")}
    assert 3 <= len(written) < 20 and not (output / "_SUCCESS").exists()

    again = run_batch(batch_models["sleeper"], *options)
    assert again.returncode == 0, again.stderr
    assert "Resuming" in again.stderr
    # The parts written before were kept as they were, not written again.
    for name, stamp in written.items():
        path = output / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    assert not list(output.glob(".*"))
    # What an uninterrupted run gives: the sleeper predicts each row's own `seconds`.
    expected = pd.read_parquet(data / "slow.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(output), expected.assign(prediction=0.2))
    assert json.loads((output / "_SUCCESS").read_text())["rows"] == 40


def test_sigterm_stops_the_job_and_its_workers(batch_models, tmp_path, jobs):
    pd.DataFrame({"seconds": [0.3] * 400}).to_parquet(tmp_path / "long.parquet")
    progress_file = tmp_path / "progress.json"
    options = ("--input", str(tmp_path / "long.parquet"), "--output", str(tmp_path / "out"))
    job = Job(
        batch_models["sleeper"], *options, "--chunk-rows", "1", "--workers", "2",
        "--progress-file", str(progress_file), log=tmp_path / "job.log",
    )  # fmt: skip
    jobs.append(job)
    # Without a terminal, a line every few seconds; the progress file at least every second.
    wait_for(lambda: "rows/s" in job.log(), 60, "a progress line in the log")
    status = json.loads(progress_file.read_text())
    assert status["state"] == "RUNNING" and status["rows_total"] == 400
    assert 0 < status["rows_done"] < 400
    wait_for(
        lambda: json.loads(progress_file.read_text())["updated"] > status["updated"],
        10, "the progress file to be rewritten",
    )  # fmt: skip

    job.signal(signal.SIGTERM)  # the job's own process only: it stops its workers
    assert job.wait(30) != 0
    wait_for(lambda: not job.group_alive(), 15, "the workers to end")
    status = json.loads(progress_file.read_text())
    assert status["state"] == "FAILED" and "resume" in status["message"]
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert not list((tmp_path / "out").glob(".*"))


def test_another_jobs_output_is_refused(finished, batch_models, data):
    taken = finished["folder"].output
    before = sorted(p.name for p in taken.iterdir())
    result = run_batch(
        batch_models["fragile"], "--input", str(data / "fragile.csv"), "--output", str(taken)
    )
    assert result.returncode == 1
    assert "holds the parts of another job" in result.stderr, result.stderr
    assert "model_uri" in result.stderr and "inputs" in result.stderr
    assert sorted(p.name for p in taken.iterdir()) == before


def test_help_explains_the_command():
    result = subprocess.run(batch_command("run", "--help"), **_pipes())
    assert result.returncode == 0
    for words in ("MODEL_URI", "models:/name@alias", "--input", "--output", "--workers",
                  "--chunk-rows", "--error-threshold", "--env-manager"):  # fmt: skip
        assert words in result.stdout
    assert "--progress-file" not in result.stdout


def test_runs_in_the_environment_built_for_the_model(batch_models, tmp_path):
    """--env-manager uv: the job starts itself again in the model's environment, progress
    file and all."""
    pd.DataFrame({"seconds": [0.01] * 30}).to_parquet(tmp_path / "in.parquet")
    progress_file = tmp_path / "progress.json"
    command = batch_command(
        batch_models["sleeper"], "--input", str(tmp_path / "in.parquet"),
        "--output", str(tmp_path / "out"), "--env-manager", "uv", "--chunk-rows", "10",
        "--progress-file", str(progress_file),
    )  # fmt: skip
    home = tmp_path / "home"
    env = {**os.environ, "MODELHOST_HOME": str(home)}
    result = subprocess.run(command, env=env, timeout=600, **_pipes())
    assert result.returncode == 0, result.stderr
    [environment] = (p for p in (home / "envs").iterdir() if p.is_dir() and p.name[0] != ".")
    assert f"Starting the job again with {environment}" in result.stderr
    status = json.loads(progress_file.read_text())
    assert (status["state"], status["rows_done"], status["rows_total"]) == ("SUCCEEDED", 30, 30)
    scored = pd.read_parquet(tmp_path / "out")
    assert scored["prediction"].tolist() == [0.01] * 30


def test_a_failed_job_started_again_fails_the_same_until_its_input_changes(
    finished, batch_models, data
):
    result = finished["bad_csv"]
    options = ("--input", str(data / "fragile.csv"), "--output", str(result.output))
    options += ("--chunk-rows", "1000")
    again = run_batch(batch_models["fragile"], *options)
    assert again.returncode == 1
    assert "rows 1000-1999, first failing row 1234, column 'x'" in again.stderr, again.stderr
    assert len(_errors(result.output)) == 1  # the chunk was not scored again
    # Fixed (here: touched) data is another job's input: its output must start over.
    stat = (data / "fragile.csv").stat()
    os.utime(data / "fragile.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fixed = run_batch(batch_models["fragile"], *options)
    assert fixed.returncode == 1
    assert "holds the parts of another job (its input_versions differs)" in fixed.stderr
