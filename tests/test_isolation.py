"""Model code is untrusted: served on `modelhost up --auth`, it finds no way out of its server.

A signed-in user registers a model whose code tries, at predict time, to read the platform's
secrets and other models' files, to tamper with its environment and to reach another model's
server; every attempt must be refused. CI runs as root, so this is the model user's path:
model servers run unprivileged, each model in a group of its own, listening on no TCP port.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from pathlib import Path

import httpx
import mlflow
import pytest
from sklearn.linear_model import LogisticRegression
from support import (
    FORK_SERVER,
    ONE_ROW,
    Platform,
    all_model_servers,
    command_of,
    eventually,
    parent_of,
)

from modelhost.config import UpSettings

API = "/api/2.0/preview/mlflow/endpoints"
TOYS = Path(__file__).parent / "toys"
ADMIN_TOKEN = "mh-isolation-admin-token-0123456789abcdef"
REGISTRY_SECRET = "registry-secret-for-isolation-0123456789"
VICTIM, INTRUDER = "team-a.victim", "team-b.intruder"
BUILD_TIMEOUT_S = 300  # the intruder's environment is built: uv installs MLflow into it

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="model users need root (as in CI)")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELHOST_ADMIN_TOKEN", ADMIN_TOKEN)
        env.setenv("MLFLOW_TRACKING_TOKEN", REGISTRY_SECRET)  # as the gateway will hold it
        home = tmp_path_factory.mktemp("isolation") / "home"
        with Platform(home, "--auth") as running:
            env.setenv("MLFLOW_TRACKING_TOKEN", ADMIN_TOKEN)  # this client signs in as admin
            mlflow.set_tracking_uri(running.url)
            mlflow.set_experiment("isolation")
            yield running
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def client(platform):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=platform.url, headers=headers, timeout=60) as client:
        yield client


def serve(client: httpx.Client, name: str) -> None:
    assert client.post(f"{API}/enable", json={"registered_model_name": name}).status_code == 200

    def ready():
        shown = client.get(f"{API}/list-versions", params={"registered_model_name": name}).json()
        states = [v["state"] for v in shown["endpoint_versions"]]
        assert states == ["VERSION_STATE_READY"], shown

    eventually(ready, timeout_s=BUILD_TIMEOUT_S)


@pytest.fixture(scope="module")
def victim(platform, client, iris) -> int:
    """An ordinary model, served; the process id of its model server."""
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            LogisticRegression(max_iter=1000).fit(iris, [0, 1, 2] * 50), name="model",
            input_example=iris.head(2), registered_model_name=VICTIM,
            pip_requirements=["mlflow", "scikit-learn"],
        )  # fmt: skip
    serve(client, VICTIM)
    assert client.post(f"/model/{VICTIM}/1/invocations", json=ONE_ROW).status_code == 200
    [server] = all_model_servers(platform)
    return server


@pytest.fixture(scope="module")
def intruder(platform, client, victim) -> int:
    """The intruder, in an environment built for it; the process id of its model server."""
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(TOYS / "intruder.py"),
            # six 1.16.0 is not in the project's environment: the intruder gets one built.
            pip_requirements=[f"mlflow=={mlflow.__version__}", "six==1.16.0"],
            registered_model_name=INTRUDER,
        )
    serve(client, INTRUDER)
    [server] = [pid for pid in all_model_servers(platform) if pid != victim]
    return server


def test_every_attempt_of_model_code_to_get_out_is_refused(platform, client, victim, intruder):
    home = platform.home
    [registry_artifact] = [
        path
        for path in (home / "registry" / "artifacts").rglob("MLmodel")
        if "sklearn" in path.read_text()  # the victim's, not the intruder's
    ]
    [fetched_copy] = (home / "models" / hashlib.sha1(VICTIM.encode()).hexdigest()[:12]).rglob(
        "MLmodel"
    )
    targets = {
        "state_db": home / "state.db",
        "registry_db": home / "registry" / "mlflow.db",
        "registry_artifact": registry_artifact,
        "fetched_copy": fetched_copy,
        "victim_socket": listening_socket(victim),
    }
    for path in targets.values():
        assert path.exists(), path  # so that a refusal is a refusal, not a missing file
    row = {name: str(path) for name, path in targets.items()} | {"victim": VICTIM}

    answer = client.post(
        f"/model/{INTRUDER}/1/invocations", json={"dataframe_records": [row]}, timeout=120
    )

    assert answer.status_code == 200, answer.text
    [outcomes] = answer.json()["predictions"]
    environment = outcomes.pop("environment")
    assert outcomes == dict.fromkeys(outcomes, "refused")
    assert len(outcomes) == 9
    assert ADMIN_TOKEN not in environment
    assert REGISTRY_SECRET not in environment
    assert platform.marker in environment.splitlines()  # what is no secret is kept


def test_model_servers_run_unprivileged_each_in_a_group_of_its_own(victim, intruder):
    model_user = pwd.getpwnam(UpSettings.model_user).pw_uid
    victim_ids, intruder_ids = ids(victim), ids(intruder)
    assert victim_ids["Uid"] == intruder_ids["Uid"] == {model_user}
    assert victim_ids["Gid"].isdisjoint(intruder_ids["Gid"])
    assert victim_ids["Groups"].isdisjoint(intruder_ids["Groups"] | intruder_ids["Gid"])
    assert 0 not in victim_ids["Gid"] | victim_ids["Groups"] | intruder_ids["Groups"]


def test_model_servers_listen_on_no_tcp_port(victim, intruder):
    listening = tcp_listeners()
    for server in (victim, intruder):
        assert socket_inodes(server), "it serves on the socket it was handed"
        assert socket_inodes(server).isdisjoint(listening)


def test_only_the_gateways_user_may_enter_the_sockets_folder_and_the_home(platform, victim):
    socket_file = listening_socket(victim)
    folder = socket_file.parent
    assert folder.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600
    home = platform.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o711  # passed through, never listed
    for private in ("state.db", "registry", "logs"):
        assert stat.S_IMODE((home / private).stat().st_mode) & 0o077 == 0, private


# --- what root sees of the platform's processes


def ids(pid: int) -> dict[str, set[int]]:
    """The Uid, Gid and Groups lines of /proc/<pid>/status, as sets."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {key: {int(i) for i in fields[key].split()} for key in ("Uid", "Gid", "Groups")}


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_socket(pid: int) -> Path:
    """The Unix socket a model server serves on, found by its open file descriptors."""
    inodes = socket_inodes(pid)
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) > 7 and fields[6] in inodes:
            paths.add(fields[7])
    [path] = paths
    return Path(path)


def tcp_listeners() -> set[str]:
    """Inodes of every listening TCP socket on the machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def test_a_server_forked_as_root_keeps_nothing_of_its_fork_server(victim, intruder):
    # The victim runs in modelhost's own environment: forked by its fork server (root's).
    fork_server = parent_of(victim)
    assert FORK_SERVER in command_of(fork_server)
    assert ids(fork_server)["Uid"] == {0}
    # The fork server's line to `up` (which may ask it for servers as root) was closed.
    assert socket_inodes(victim).isdisjoint(socket_inodes(fork_server))
    # A built environment holds what model code chose: its server starts afresh.
    assert FORK_SERVER not in command_of(parent_of(intruder))
