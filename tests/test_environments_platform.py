"""On the platform, each version runs in the Python environment its requirements declare."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from importlib import metadata
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.models import infer_signature
from support import Platform, cli, eventually

from modelhost.control.environments import MARKER
from modelhost.control.store import StateStore

API = "/api/2.0/preview/mlflow/endpoints"
TOYS = Path(__file__).parent / "toys"
PINNED_SIX = "1.16.0"  # a version the project's own environment does not have
UNRESOLVABLE = "nonexistent-package-modelhost-xyz==1.0"
ONE_ROW = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}
BUILD_TIMEOUT_S = 300  # a fresh environment: uv installs MLflow and its dependencies


def log_six_model(name: str, requirements: list[str]) -> str:
    """Register a version of `name` answering the `six` it imports; its version number."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(TOYS / "six_version.py"),
            code_paths=[str(TOYS / "version_helper.py")],
            pip_requirements=requirements,
            signature=infer_signature(pd.DataFrame({"x": [1.0]}), np.array([PINNED_SIX])),
            registered_model_name=name,
        )
    return str(info.registered_model_version)


PINNED = [f"mlflow=={mlflow.__version__}", f"six=={PINNED_SIX}"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with Platform(
        tmp_path_factory.mktemp("environments") / "home", experiment="environments"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(platform):
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        yield client


def versions(client: httpx.Client, name: str) -> dict[str, dict]:
    shown = client.get(f"{API}/list-versions", params={"registered_model_name": name}).json()
    return {v["endpoint_version_name"]: v for v in shown["endpoint_versions"]}


def wait_for_state(client, name: str, version: str, state: str, seen: list | None = None) -> dict:
    def reached():
        shown = versions(client, name).get(version, {})
        if seen is not None and shown:
            seen.append((shown["state"], shown["state_message"]))
        assert shown.get("state") == state, shown
        return shown

    return eventually(reached, timeout_s=BUILD_TIMEOUT_S)


def events(client, name: str) -> list[str]:
    answer = client.get(f"{API}/events", params={"registered_model_name": name})
    return [e["message"] for e in answer.json()["events"]]


def version_logs(client, name: str, version: str) -> str:
    params = {"registered_model_name": name, "endpoint_version_name": version}
    return client.get(f"{API}/logs", params=params).json()["logs"]


def predict(client, name: str, ref: str) -> httpx.Response:
    return client.post(f"/model/{name}/{ref}/invocations", json=ONE_ROW)


@pytest.fixture(scope="module")
def pinned(client) -> list[tuple[str, str]]:
    """Model `pinned` version 1, enabled and served; the states it went through."""
    assert metadata.version("six") != PINNED_SIX  # else the tests below would prove nothing
    log_six_model("pinned", PINNED)
    assert client.post(f"{API}/enable", json={"registered_model_name": "pinned"}).is_success
    seen: list[tuple[str, str]] = []
    wait_for_state(client, "pinned", "1", "VERSION_STATE_READY", seen)
    return seen


def test_a_version_answers_from_the_environment_it_declares(client, pinned):
    answer = predict(client, "pinned", "1")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [PINNED_SIX]}
    # While the environment was built, the version said so.
    assert (
        "VERSION_STATE_PENDING",
        "Building the Python environment the model declares (requirements.txt); see the "
        "version's logs.",
    ) in pinned
    assert "Version 1: building the Python environment it declares." in events(client, "pinned")
    built = version_logs(client, "pinned", "1")
    assert f" + six=={PINNED_SIX}" in built  # uv's own output, in the version's logs
    assert "Built the model's environment" in built and "Loading version 1" in built
    status = client.get(f"{API}/get-status", params={"registered_model_name": "pinned"}).json()
    assert status["endpoint_status"]["settings"]["env_manager"] == "auto"


def test_a_model_with_the_same_needs_reuses_the_environment(platform, client, pinned):
    # The same needs in other words: order and spelling do not make another environment.
    log_six_model("pinned too", [f"Six == {PINNED_SIX}", f"MLflow=={mlflow.__version__}"])
    client.post(f"{API}/enable", json={"registered_model_name": "pinned too"})
    wait_for_state(client, "pinned too", "1", "VERSION_STATE_READY")
    assert predict(client, "pinned%20too", "1").json() == {"predictions": [PINNED_SIX]}
    said = events(client, "pinned too")
    assert any(m.startswith("Version 1 uses the Python environment") for m in said), said
    assert not any("building" in m for m in said), said
    environments = list((platform.home / "envs").glob(f"*/{MARKER}"))
    assert len(environments) == 1, environments


def test_versions_with_other_needs_run_side_by_side_and_a_failed_build_is_named(client, pinned):
    unresolvable = log_six_model("pinned", [f"mlflow=={mlflow.__version__}", UNRESOLVABLE])
    satisfied_here = log_six_model("pinned", [f"mlflow=={mlflow.__version__}", "six"])
    failed = wait_for_state(client, "pinned", unresolvable, "VERSION_STATE_FAILED")
    assert f"{UNRESOLVABLE} cannot be installed" in failed["state_message"]
    wait_for_state(client, "pinned", satisfied_here, "VERSION_STATE_READY")

    # Two environments of one model, each version in its own; the failed one does not answer.
    assert predict(client, "pinned", "1").json() == {"predictions": [PINNED_SIX]}
    here = predict(client, "pinned", satisfied_here).json()
    assert here == {"predictions": [metadata.version("six")]}
    refused = predict(client, "pinned", unresolvable)
    assert refused.status_code == 503
    assert any(
        m.startswith(f"Version {unresolvable} failed: Could not install")
        for m in events(client, "pinned")
    )
    logged = version_logs(client, "pinned", unresolvable)
    assert UNRESOLVABLE in logged and f"Version {unresolvable} failed to load" in logged


def test_changing_env_manager_moves_versions_with_no_failed_request(platform, client, pinned):
    name = "pinned"
    bad = client.post(
        f"{API}/update-settings", json={"registered_model_name": name, "env_manager": "conda"}
    )
    assert bad.status_code == 400
    assert "auto, local, uv" in bad.json()["message"]
    missing = client.post(f"{API}/update-settings", json={"registered_model_name": name})
    assert missing.status_code == 400  # no env_manager
    stranger = client.post(
        f"{API}/update-settings", json={"registered_model_name": "nope", "env_manager": "uv"}
    )
    assert stranger.status_code == 404

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            while not stop.is_set():
                statuses.append(predict(own, name, "1").status_code)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        # `local`: modelhost's own environment, whatever the version declares.
        changed = cli(platform, "settings", name, "--env-manager", "local")
        assert changed.stdout == "env_manager of pinned is local.\n", changed.stderr

        def moved():
            answer = predict(client, name, "1").json()
            assert answer == {"predictions": [metadata.version("six")]}, answer

        eventually(moved, timeout_s=120)
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {200}, statuses

    def environment_server_stopped():
        said = events(client, name)
        assert any(m.endswith("stopped: no version needs it now.") for m in said), said

    eventually(environment_server_stopped, timeout_s=30)  # nothing it held is served from it
    status = json.loads(cli(platform, "status", name).stdout)
    assert status["settings"]["env_manager"] == "local"
    assert "Settings changed: env_manager auto → local." in events(client, name)


def test_a_state_database_made_before_serving_settings_gets_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as db:  # the serving table as it was before env_manager
        db.execute(
            sa.text(
                "CREATE TABLE serving (registered_model_name VARCHAR PRIMARY KEY, "
                "enabled_at FLOAT NOT NULL)"
            )
        )
        db.execute(sa.text("INSERT INTO serving VALUES ('older', 1.0)"))
    engine.dispose()
    store = StateStore(url)
    assert store.served() == {"older": {}}  # nothing set: the platform's defaults
    assert store.update("older", {"env_manager": "uv"})
    assert not store.update("never served", {"env_manager": "uv"})
    assert store.served() == {"older": {"env_manager": "uv"}}
    store.engine.dispose()


SLOW_BACKEND = """\
import os, pathlib, time
pathlib.Path(__file__).with_name("backend.pid").write_text(str(os.getpid()))
time.sleep(600)  # a build that says nothing for minutes, as a large compile does
"""


def test_ctrl_c_during_a_build_stops_it_at_once_and_leaves_nothing(tmp_path):
    """uv may say nothing for minutes while it builds a package: Ctrl-C does not wait for it."""
    with tempfile.TemporaryDirectory(prefix="modelhost-slowpkg-") as folder:
        package = Path(folder)  # outside pytest's own folder: the model user builds it
        os.chmod(package, 0o777)  # and the backend, as that user, writes its pid here
        (package / "pyproject.toml").write_text(
            '[build-system]\nrequires = []\nbuild-backend = "slow_backend"\n'
            'backend-path = ["."]\n[project]\nname = "slowpkg"\nversion = "0.1"\n'
        )
        (package / "slow_backend.py").write_text(SLOW_BACKEND)
        with Platform(tmp_path / "home", experiment="slow-build") as platform:
            log_six_model("slow-build", [*PINNED, f"slowpkg @ {package.as_uri()}"])
            enabled = httpx.post(
                f"{platform.url}{API}/enable",
                json={"registered_model_name": "slow-build", "env_manager": "uv"},
            )
            assert enabled.is_success, enabled.text
            backend = eventually(lambda: _pid_in(package / "backend.pid"), BUILD_TIMEOUT_S)
            platform.stop()  # Ctrl-C: `up` must end within its bound, with nothing left running
        assert not _alive(backend)  # the package's build backend went with uv


def _pid_in(path: Path) -> int:
    written = path.read_text() if path.exists() else ""
    assert written, f"{path} is not written yet"
    return int(written)


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (dead, its new parent yet to reap it) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
