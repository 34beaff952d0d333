"""Each model is served in the Python environment its requirements declare, built with real uv."""

from __future__ import annotations

import concurrent.futures
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression
from support import Server

from modelhost.control.environments import (
    MARKER,
    EnvironmentFailed,
    environment_key,
    prepare,
)
from modelhost.control.requirements import RequirementsError, read_requirements, unmet_here

TOYS = Path(__file__).parent.parent / "toys"
PINNED_SIX = "1.16.0"  # a version the project's own environment does not have
UNRESOLVABLE = "nonexistent-package-modelhost-xyz==1.0"
ONE_ROW = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}


def model_folder(path: Path, **files: str) -> Path:
    """A model folder written by hand: an MLmodel plus the given declaration files."""
    path.mkdir(parents=True)
    (path / "MLmodel").write_text("flavors:\n  python_function:\n    python_version: 3.11.7\n")
    for name, text in files.items():
        (path / name.replace("_txt", ".txt").replace("_yaml", ".yaml")).write_text(text)
    return path


def texts(requirements) -> list[str]:
    return [e.text for e in requirements.entries]


@pytest.fixture(scope="session")
def modelhost_home(tmp_path_factory) -> Path:
    """One home, so one environment root, for every test: each environment is built once."""
    return tmp_path_factory.mktemp("modelhost-home")


@pytest.fixture(scope="session")
def env_root(modelhost_home) -> Path:
    return modelhost_home / "envs"


@pytest.fixture(scope="session")
def pinned_models(tmp_path_factory) -> list[Path]:
    """Two models that pin `six` at another version than ours, declared in different words."""
    root = tmp_path_factory.mktemp("pinned")
    signature = infer_signature(pd.DataFrame({"x": [1.0]}), np.array([PINNED_SIX]))
    declared = [
        [f"mlflow=={mlflow.__version__}", f"six=={PINNED_SIX}"],
        [f"Six == {PINNED_SIX}", f"MLflow=={mlflow.__version__}"],
    ]
    paths = []
    for i, requirements in enumerate(declared):
        path = root / f"model-{i}"
        mlflow.pyfunc.save_model(
            path,
            python_model=str(TOYS / "six_version.py"),
            code_paths=[str(TOYS / "version_helper.py")],
            pip_requirements=requirements,
            signature=signature,
        )
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def pinned_envs(pinned_models, env_root):
    """Both pinned models' environments, prepared at once: one build, shared."""
    logs: list[list[str]] = [[], []]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(prepare, read_requirements(path), "auto", env_root, log.append)
            for path, log in zip(pinned_models, logs, strict=True)
        ]
        environments = [f.result() for f in futures]
    seconds = time.monotonic() - started
    print(f"\nPrepared the pinned environment in {seconds:.1f} s")  # the cost of a fresh build
    return environments, logs


def test_requirements_txt_is_read_as_pip_reads_it(tmp_path):
    model = model_folder(
        tmp_path / "model",
        requirements_txt="\n".join(
            [
                "# what the model needs",
                f"mlflow=={mlflow.__version__}  # the loader",
                "",
                'Six >= 1.16 ; python_version >= "3"',
                "-r extra.txt",
                "--extra-index-url https://packages.example/simple",
                "-c constraints.txt",
                "wheels/toolbox-1.0-py3-none-any.whl",
                "numpy\\",
                "    ==2.0",
            ]
        ),
        extra_txt="pandas\n",
        constraints_txt="urllib3<3\n",
    )
    (model / "wheels").mkdir()
    (model / "wheels" / "toolbox-1.0-py3-none-any.whl").write_bytes(b"a wheel's bytes")

    requirements = read_requirements(model)

    assert requirements.source == "requirements.txt"
    assert requirements.python == "3.11.7"  # from MLmodel, as nothing else declares it
    assert texts(requirements) == [
        f"mlflow=={mlflow.__version__}",
        'Six >= 1.16 ; python_version >= "3"',
        "pandas",
        "--extra-index-url https://packages.example/simple",
        str(model / "wheels" / "toolbox-1.0-py3-none-any.whl"),
        "numpy    ==2.0",
    ]
    assert [e.text for e in requirements.constraints] == ["urllib3<3"]
    assert requirements.names() == {"mlflow", "six", "pandas", "numpy"}
    wheel = requirements.entries[4]
    assert wheel.identity.startswith("sha256:") and wheel.requirement is None


def test_python_env_yaml_is_read_with_its_referenced_files(tmp_path):
    model = model_folder(
        tmp_path / "model",
        python_env_yaml="python: 3.10\nbuild_dependencies:\n- pip\ndependencies:\n"
        "- mlflow\n- -r deps.txt\n",
        deps_txt=f"six=={PINNED_SIX}\n",
    )
    requirements = read_requirements(model)
    assert requirements.source == "python_env.yaml"
    assert requirements.python == "3.10"  # not the float 3.1
    assert requirements.python_minor == "3.10"
    assert texts(requirements) == ["mlflow", f"six=={PINNED_SIX}"]


def test_conda_yaml_pip_section_and_python_are_read(tmp_path):
    model = model_folder(
        tmp_path / "model",
        conda_yaml="channels: [conda-forge]\ndependencies:\n- python=3.9.18\n- pip\n"
        "- pip:\n  - mlflow==3.1.0\n  - scikit-learn\nname: mlflow-env\n",
    )
    requirements = read_requirements(model)
    assert (requirements.source, requirements.python) == ("conda.yaml", "3.9.18")
    assert texts(requirements) == ["mlflow==3.1.0", "scikit-learn"]


def test_what_mlflow_writes_is_read_from_each_of_its_files(pinned_models, tmp_path):
    saved = read_requirements(pinned_models[0])
    assert saved.source == "requirements.txt"
    assert saved.python == platform.python_version()
    assert texts(saved) == [f"mlflow=={mlflow.__version__}", f"six=={PINNED_SIX}"]
    assert (pinned_models[0] / "code" / "version_helper.py").is_file()

    conda_only = shutil.copytree(pinned_models[0], tmp_path / "conda-only")
    (conda_only / "requirements.txt").unlink()
    (conda_only / "python_env.yaml").unlink()
    from_conda = read_requirements(conda_only)
    assert from_conda.source == "conda.yaml"
    assert (from_conda.python, texts(from_conda)) == (saved.python, texts(saved))


def test_a_missing_referenced_file_is_named(tmp_path):
    model = model_folder(tmp_path / "model", requirements_txt="mlflow\n-r missing.txt\n")
    with pytest.raises(RequirementsError, match=r"missing\.txt is missing"):
        read_requirements(model)


def test_equal_needs_share_a_key_and_different_needs_do_not(pinned_models, tmp_path):
    first, second = (read_requirements(path) for path in pinned_models)
    assert environment_key(first) == environment_key(read_requirements(pinned_models[0]))
    assert environment_key(first) == environment_key(second)  # same needs, other words

    def key(name: str, **files: str) -> str:
        return environment_key(read_requirements(model_folder(tmp_path / name, **files)))

    assert key("a", requirements_txt="six==1.16.0") != key("b", requirements_txt="six==1.15.0")
    assert key("c", python_env_yaml="python: 3.10\ndependencies: [six]") != key(
        "d", python_env_yaml="python: 3.11\ndependencies: [six]"
    )
    wheel = "wheels/toolbox-1.0-py3-none-any.whl"
    keys = []
    for name, content in [("e", b"one"), ("f", b"one"), ("g", b"two")]:
        model = model_folder(tmp_path / name, requirements_txt=wheel)
        (model / "wheels").mkdir()
        (model / wheel).write_bytes(content)
        keys.append(environment_key(read_requirements(model)))
    assert keys[0] == keys[1] != keys[2]  # a wheel is known by its content, not its path


def test_auto_serves_here_when_this_environment_satisfies_the_model(tmp_path, pinned_models):
    model = tmp_path / "classifier"
    mlflow.sklearn.save_model(
        LogisticRegression().fit([[0.0], [1.0]], [0, 1]),
        model,
        pip_requirements=["mlflow", "scikit-learn>=1.0", "pandas"],
    )
    root = tmp_path / "envs"
    environment = prepare(read_requirements(model), "auto", root)
    assert environment.current and not environment.built
    assert environment.python == Path(sys.executable)
    assert not root.exists()  # nothing was built

    pinned = read_requirements(pinned_models[0])
    assert f"six=={PINNED_SIX}" in (unmet_here(pinned) or "")
    assert prepare(pinned, "local", root).current  # `local` never builds


def test_the_model_answers_from_the_environment_it_declares(
    pinned_models, pinned_envs, modelhost_home, tmp_path
):
    assert metadata.version("six") != PINNED_SIX  # else this test would prove nothing
    server = Server(
        pinned_models[0],
        "--env-manager",
        "auto",
        log_dir=tmp_path,
        env={"MODELHOST_HOME": str(modelhost_home)},
    )
    try:
        server.start().wait_ready()
        answer = server.invoke(ONE_ROW)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [PINNED_SIX]}
    finally:
        server.stop()
    assert "built before" in server.log()  # the session's environment, not a second build


def test_models_with_the_same_needs_share_one_build(pinned_models, pinned_envs, env_root):
    environments, logs = pinned_envs
    first, second = environments
    assert first.key == second.key and first.path == second.path
    assert sorted([first.built, second.built]) == [False, True]  # concurrent, yet built once
    assert (first.path / MARKER).is_file()
    assert not first.current and first.python.is_file()
    built_log = logs[0] if first.built else logs[1]
    assert f" + six=={PINNED_SIX}" in built_log  # uv's output reached the caller's log

    again = prepare(read_requirements(pinned_models[1]), "uv", env_root)
    assert (again.key, again.built) == (first.key, False)


def test_an_unresolvable_requirement_is_named(tmp_path, env_root):
    model = model_folder(tmp_path / "model", requirements_txt=f"{UNRESOLVABLE}\n")
    requirements = read_requirements(model)
    for _ in range(2):  # a failed build leaves nothing that the next try takes as good
        with pytest.raises(EnvironmentFailed) as failed:
            prepare(requirements, "auto", env_root)
        assert f"{UNRESOLVABLE} cannot be installed" in failed.value.message
        assert "Could not install the model's requirements" in failed.value.message
        assert not (env_root / environment_key(requirements)).exists()


def test_a_python_this_machine_lacks_is_a_clear_failure(tmp_path, env_root, modelhost_home):
    model = model_folder(
        tmp_path / "model", python_env_yaml="python: 3.5.10\ndependencies: [mlflow]\n"
    )
    requirements = read_requirements(model)
    with pytest.raises(EnvironmentFailed, match=r"Python 3\.5 is not available on this machine"):
        prepare(requirements, "uv", env_root)
    assert not (env_root / environment_key(requirements)).exists()

    served = subprocess.run(
        [sys.executable, "-m", "modelhost", "serve", "-m", str(model), "--port", "0"],
        env={**os.environ, "MODELHOST_HOME": str(modelhost_home), "MODELHOST_ENV_MANAGER": "auto"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode != 0
    assert "Python 3.5 is not available on this machine" in served.stderr
