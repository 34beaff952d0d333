"""`modelhost package`: a bundle that installs from its own wheels and serves with no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from support import free_port

from modelhost import __version__
from modelhost.cli import main
from modelhost.processes import stop_group

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# Any attempt to reach an index or the internet fails at once: nothing listens on port 9.
NO_NETWORK = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/",
    "PIP_EXTRA_INDEX_URL": "http://127.0.0.1:9/",
    **{name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
    **{name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "all_proxy")},
}
INSTALL_AND_START_TIMEOUT_S = 600
REGISTERED = "iris-bundle"
MODEL_URI = f"models:/{REGISTERED}@champion"


@pytest.fixture(scope="module")
def registry(model_paths, tmp_path_factory) -> str:
    """A registry (SQLite) where the classifier is `models:/iris-bundle@champion`."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(REGISTERED)
    version = client.create_model_version(REGISTERED, source=str(model_paths["classifier"]))
    client.set_registered_model_alias(REGISTERED, "champion", version.version)
    return uri


@pytest.fixture(scope="module")
def packaged(registry, tmp_path_factory) -> tuple[Path, str]:
    """The classifier packaged once from the registry, into a folder that held a file, then
    moved elsewhere. Returns the bundle's folder and what `modelhost package` wrote on stderr.
    """
    root = tmp_path_factory.mktemp("package")
    outdir = root / "made" / "bundle"
    outdir.mkdir(parents=True)
    (outdir / "notes.txt").write_text("mine")
    command = ["package", MODEL_URI, str(outdir), "--dockerfile", "--force"]
    made = subprocess.run(
        [sys.executable, "-m", "modelhost", *command],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "MLFLOW_TRACKING_URI": registry},
    )
    assert made.returncode == 0, made.stderr
    moved = root / "elsewhere" / "moved-bundle"
    moved.parent.mkdir()
    shutil.move(outdir, moved)
    return moved, made.stderr


def test_bundle_installs_and_serves_with_no_network(packaged, model_paths, iris, tmp_path):
    bundle, _ = packaged
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(bundle / "serve"), "--port", str(port), "--max-batch-size", "64"],
            cwd=tmp_path,  # not the bundle's folder: the script finds its own
            env={**os.environ, **NO_NETWORK},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(server, url, log_path)
        split = iris.to_dict(orient="split")
        answer = httpx.post(
            f"{url}/invocations",
            json={"dataframe_split": {"columns": split["columns"], "data": split["data"]}},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        expected = mlflow.pyfunc.load_model(str(model_paths["classifier"])).predict(iris)
        assert answer.json()["predictions"] == expected.tolist()
    finally:
        stop_group(server, 15)
    # It served from the environment made inside the bundle, not from this one.
    found = subprocess.run(
        [str(bundle / ".venv/bin/python"), "-c", "import modelhost; print(modelhost.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(found.stdout.strip()).is_relative_to(bundle / ".venv")


def test_bundle_holds_model_wheels_and_texts(packaged):
    bundle, progress = packaged
    assert (bundle / "notes.txt").read_text() == "mine"  # --force replaced only its own files
    assert (bundle / "model" / "MLmodel").is_file()
    assert (bundle / "model" / "requirements.txt").is_file()
    wheels = {path.name.split("-")[0].lower() for path in (bundle / "wheels").glob("*.whl")}
    assert {"modelhost", "mlflow", "scikit_learn", "pandas", "uvicorn", "click"} <= wheels
    pins = (bundle / "requirements.txt").read_text().split()
    assert f"modelhost=={__version__}" in pins
    assert any(pin.startswith("scikit-learn==") for pin in pins)
    assert os.access(bundle / "serve", os.X_OK)
    assert (bundle / "serve").read_text().startswith("#!/bin/sh\n")
    readme = (bundle / "README.txt").read_text()
    assert MODEL_URI in readme
    assert f"modelhost {__version__}" in readme
    mlflow_pin = next(pin for pin in pins if pin.startswith("mlflow=="))
    assert f"MLflow {mlflow_pin.split('==')[1]}" in readme
    assert "./serve" in readme
    # Progress said what was being fetched.
    assert "Fetching" in progress
    assert "mlflow==" in progress


def test_dockerfile_installs_from_the_wheels_alone(packaged):
    bundle, _ = packaged
    dockerfile = (bundle / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert f"FROM python:{PYTHON}-slim" in lines
    assert "COPY . /bundle" in lines
    install = dockerfile[dockerfile.index("RUN ") :]
    assert "--no-index" in install
    assert "--find-links /bundle/wheels" in install
    assert "--requirement /bundle/requirements.txt" in install
    assert "EXPOSE 5000" in lines
    assert 'ENTRYPOINT ["/bundle/serve", "--host", "0.0.0.0", "--port", "5000"]' in lines
    assert ".venv" in (bundle / ".dockerignore").read_text().split()


def test_refuses_a_folder_that_is_not_empty(model_paths, tmp_path):
    (tmp_path / "something.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["package", str(model_paths["classifier"]), str(tmp_path)])
    assert result.exit_code == 1
    assert "is not empty" in result.output
    assert "--force" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["something.txt"]


def test_refuses_what_is_not_a_model(tmp_path):
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    (not_a_model / "data.csv").write_text("x\n1\n")
    runner = CliRunner()
    missing = runner.invoke(main, ["package", str(tmp_path / "nothing"), str(tmp_path / "a")])
    assert missing.exit_code == 1
    assert f"Cannot fetch the model {tmp_path / 'nothing'}: there is no such folder" in (
        missing.output
    )
    plain = runner.invoke(main, ["package", str(not_a_model), str(tmp_path / "b")])
    assert plain.exit_code == 1
    assert "is not an MLflow model" in plain.output
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("requirement", "named"),
    [
        ("mlflow<3", "mlflow"),  # modelhost needs MLflow 3
        ("skops==0.0.0", "skops==0.0.0"),  # no such version
    ],
)
def test_names_a_requirement_that_cannot_be_met(model_paths, tmp_path, requirement, named):
    model = tmp_path / "model"
    shutil.copytree(model_paths["classifier"], model)
    (model / "requirements.txt").write_text(f"{requirement}\n")
    result = CliRunner().invoke(main, ["package", str(model), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "No set of packages meets both" in result.output
    assert named in result.output
    assert not (tmp_path / "out").exists()


def test_refuses_a_python_version_it_cannot_read(model_paths, tmp_path):
    result = CliRunner().invoke(
        main,
        ["package", str(model_paths["classifier"]), str(tmp_path / "out"), "--python-version", "3"],
    )
    assert result.exit_code == 1
    assert "--python-version takes a version like 3.12" in result.output


def _wait_ready(server: subprocess.Popen, url: str, log_path: Path) -> None:
    """Wait for the first run of `serve` to install the bundle and answer /ping."""
    deadline = time.monotonic() + INSTALL_AND_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"serve did not answer within the time allowed:\n{log_path.read_text()}")
