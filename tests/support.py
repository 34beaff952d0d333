"""Real model servers on free loopback ports, started and stopped with their process groups."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj
from sklearn.linear_model import LogisticRegression

from modelhost.control.servers import bind_socket
from modelhost.processes import stop_group

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`modelhost serve` in a subprocess; `start()` returns at once, `wait_ready()` blocks."""

    def __init__(self, model_uri: str | Path, *options: str, log_dir: Path, env=None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "modelhost",
            "serve",
            "-m",
            str(model_uri),
            "--port",
            str(self.port),
            *options,
        ]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def wait_ready(self) -> Server:
        wait_answering(self.process, f"{self.url}/ping", "server", self.log, self.stop)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def invoke(self, body, content_type: str = "application/json") -> httpx.Response:
        """POST a body (bytes, or a value sent as JSON) to /invocations."""
        if not isinstance(body, (bytes, str)):
            import json

            body = json.dumps(body)
        return httpx.post(
            f"{self.url}/invocations",
            content=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )


def start_all(servers: dict[str, Server]) -> dict[str, Server]:
    """Start every server at once (each spends seconds importing MLflow), then wait for all."""
    for server in servers.values():
        server.start()
    try:
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: dict[str, Server]) -> None:
    for server in servers.values():
        server.stop()


def burst(server: Server, bodies: list, content_type: str = "application/json") -> list[Reply]:
    """Send every body at once, each on its own connection, so they arrive together.

    A client library issues requests one after another; written to open sockets back to back
    they reach the server within a millisecond, as a crowd of clients' requests do.
    """
    import http.client
    import json

    connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in bodies]
    try:
        for connection, body in zip(connections, bodies, strict=True):
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            head = (
                f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
            )
            connection.sendall(head.encode() + payload)
        replies = []
        for connection in connections:
            response = http.client.HTTPResponse(connection)
            response.begin()
            replies.append(Reply(response.status, response.read()))
        return replies
    finally:
        for connection in connections:
            connection.close()


class Reply:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self):
        import json

        return json.loads(self.content)


# --- the platform: `modelhost up` in a subprocess

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ONE_ROW = {"dataframe_split": {"columns": FEATURES, "data": [[5.1, 3.5, 1.4, 0.2]]}}
UP_LINE = "modelhost is up on"  # what `up` prints once it serves


def wait_answering(process: subprocess.Popen, url: str, what: str, log, stop) -> None:
    """Wait until `url` answers 200; `stop()` and raise, with `log()`, if `process` exits first
    or does not answer within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop()
    raise RuntimeError(f"{what} did not answer {url} within {START_TIMEOUT_S} s:\n{log()}")


class Platform:
    """`modelhost up` in a subprocess with its own home.

    `experiment`: as a context, MLflow's client in this process logs to that experiment on the
    platform until the block ends.
    """

    def __init__(self, home, *options: str, experiment: str | None = None) -> None:
        self.home = home
        self.experiment = experiment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "modelhost", "up", "--home", str(home),
                     "--port", str(self.port), *options]  # fmt: skip
        self.log_path = home.parent / f"up-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.up_at: float | None = None
        # Every process `up` starts inherits this, so none can hide from the check at exit.
        self.marker = f"TEST_PLATFORM_MARKER={uuid.uuid4().hex}"

    def __enter__(self) -> Platform:
        self.start()
        if self.experiment is not None:
            mlflow.set_tracking_uri(self.url)
            mlflow.set_experiment(self.experiment)
        return self

    def start(self) -> Platform:
        """Start `up` (again, on the same home and port) and wait until it is healthy.

        `up_at` is when its log said it is up (time.monotonic()): what a user waits for.
        """
        reachable_home(self.home)
        self.up_at = None
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            name, _, value = self.marker.partition("=")
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, name: value},
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            if self.up_at is None and UP_LINE in self._log_since(logged):
                self.up_at = time.monotonic()
            try:
                healthy = httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                healthy = False
            if healthy:  # a platform that never says it is up leaves `up_at` None
                return self
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError(f"modelhost up did not become healthy:\n{self.log_path.read_text()}")

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def __exit__(self, *_) -> None:
        try:
            self.stop()
        finally:
            if self.experiment is not None:
                mlflow.set_tracking_uri(None)

    def stop(self, group: bool = False) -> None:
        """Ctrl-C, as a user stops it; then check nothing it started is left.

        `group`: to its whole process group, as a terminal sends Ctrl-C. Once stopped, a second
        stop only checks again.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if group else os.kill)(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        leftovers = started_by(self.marker)
        assert leftovers == [], f"still running after Ctrl-C: {leftovers}"

    def restart(self) -> Platform:
        """Ctrl-C to its process group, then `up` again with the same home, port and flags."""
        self.stop(group=True)
        return self.start()


def reachable_home(home: Path) -> None:
    """As root, make `home` a link to a folder outside pytest's temporary folder.

    Model servers then run as the model user, who must pass through the home's parents; each
    pytest run on the machine makes pytest's own folder 0700 again, shutting it out.
    """
    if os.geteuid() != 0 or home.exists() or home.is_symlink():
        return
    real = Path(tempfile.mkdtemp(prefix="modelhost-test-home-"))
    atexit.register(shutil.rmtree, real, True)  # a test may start `up` on the home again
    home.symlink_to(real, target_is_directory=True)


def started_by(marker: str) -> list[str]:
    """The command lines of running processes whose environment holds `marker`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


def eventually(check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cli(platform, *args: str) -> subprocess.CompletedProcess:
    """`modelhost serving ARGS` against an open platform."""
    return modelhost(platform.url, None, "serving", *args)


def modelhost(url: str, token: str | None, *args: str) -> subprocess.CompletedProcess:
    """The `modelhost` command against the platform at `url`, signed in with `token`."""
    env = {**os.environ, "MODELHOST_URL": url}
    if token:
        env["MODELHOST_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "modelhost", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


# --- predictions as MLflow renders them


def mlflow_json(predictions) -> object:
    """Predictions as MLflow's scoring server renders them, parsed back."""
    return json.loads(json.dumps(_get_jsonable_obj(predictions, "records"), cls=NumpyEncoder))


def sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Rows like the training data, jittered so they are not the training rows themselves."""
    rng = np.random.default_rng(seed)
    picked = frame.sample(rows, random_state=seed, replace=True).reset_index(drop=True)
    return (picked + rng.normal(0, 0.05, picked.shape)).round(3)


# --- requests as an attacker sends them


def raw_request(
    url: str, method: str, path: str, token: str | None = None, body: object = None
) -> tuple[int, dict]:
    """Send `path` exactly as written (HTTP clients resolve `..` first), return status and JSON.

    The JSON is `{}` for an empty answer and `{"text": ...}` for one that is not JSON.
    """
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(text) if text else {}
    except ValueError:
        return response.status, {"text": text.decode(errors="replace")}


# --- MLflow's client against a platform


@contextlib.contextmanager
def signed_in_as(url: str, token: str):
    """MLflow's client with `token`: it sends MLFLOW_TRACKING_TOKEN as a Bearer token."""
    before = os.environ.get("MLFLOW_TRACKING_TOKEN")
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    mlflow.set_tracking_uri(url)
    try:
        yield MlflowClient()
    finally:
        mlflow.set_tracking_uri(None)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        else:
            os.environ["MLFLOW_TRACKING_TOKEN"] = before


def log_iris(iris, name: str) -> str:
    """Log and register a logistic regression on iris as `name`; its new version."""
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression(max_iter=1000).fit(iris, [0, 1, 2] * 50), name="model",
            input_example=iris.head(2), registered_model_name=name,
            pip_requirements=["mlflow", "scikit-learn"],
        )  # fmt: skip
    return str(info.registered_model_version)


# --- faults: an external registry to kill, the processes of a platform, steady load


class Registry:
    """An MLflow tracking server of the test's own, which it can kill and start again.

    It keeps its port and its database across starts, as a registry brought back by its
    operator does; `modelhost up --registry-uri <url>` uses it as any MLflow server.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        self.process: subprocess.Popen | None = None
        self.marker = f"TEST_REGISTRY_MARKER={uuid.uuid4().hex}"

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    def start(self) -> Registry:
        """Start the server and wait until it answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        name, _, value = self.marker.partition("=")
        env = {
            **os.environ,
            name: value,
            # MLflow starts its ASGI server by name: let it find the one beside this Python.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job consumers: a faster start
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        wait_answering(self.process, f"{self.url}/health", "the registry", self.log, self.stop)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server and every process it started, and wait until they are gone."""
        self._end(grace_s=0)

    def stop(self) -> None:
        """SIGTERM, SIGKILL what lingers; then check nothing it started is left."""
        self._end(grace_s=15)
        leftovers = started_by(self.marker)
        assert leftovers == [], f"the registry left processes running: {leftovers}"

    def _end(self, grace_s: float) -> None:
        if self.process is None:
            return
        stop_group(self.process, grace_s)  # SIGTERM, then SIGKILL (at once with grace 0)
        # Its children too, so the port is free for the next start.
        eventually(lambda: _assert_none(started_by(self.marker)), timeout_s=15)


def _assert_none(found: list) -> None:
    assert found == [], found


FORK_SERVER = b"modelhost.worker.forkserver"  # `python -m` it: the third word of its command


def all_model_servers(platform: Platform) -> list[int]:
    """Process ids of every model server `platform` runs, of any model.

    A model server is a `modelhost worker` process, or a process forked by a fork server (it
    keeps its fork server's command line: it is one whose parent is a fork server).
    """
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            command = command_of(pid)
            if command[2:4] != [b"modelhost", b"worker"] and (
                command[2:3] != [FORK_SERVER] or command_of(parent_of(pid))[2:3] != [FORK_SERVER]
            ):
                continue
            if platform.marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def registry_server(platform: Platform) -> int:
    """The pid of the `mlflow server` `platform` runs: the leader of the registry's process
    group. Its command line names no path of the home (those travel by environment)."""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # gone meanwhile
            pid = int(proc.name)
            if command_of(pid)[2:4] == [b"mlflow", b"server"] and platform.marker.encode() in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                return pid
    raise AssertionError("the embedded registry is not running")


def model_servers(platform: Platform, name: str) -> list[int]:
    """Process ids of the model servers `platform` runs for registered model `name`: those
    that write the model's own log file, which tells whose server it is."""
    from modelhost.control.servers import server_log  # the platform's name for a model's log

    model_log = str(server_log(platform.home.resolve() / "logs", name))
    found = []
    for pid in all_model_servers(platform):
        with contextlib.suppress(OSError):  # gone meanwhile
            if any(os.readlink(fd) == model_log for fd in Path(f"/proc/{pid}/fd").iterdir()):
                found.append(pid)
    return found


def command_of(pid: int) -> list[bytes]:
    """Process `pid`'s command line, split at its NULs."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def signal_server(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to a model server and whatever it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request of a `Load`: where it went, when, how long it took and what came back."""

    target: str
    phase: str
    started: float  # time.monotonic()
    duration_s: float
    status: int  # 0: no HTTP answer at all (refused, reset, the client's own timeout)
    retry_after: bool
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.duration_s


class Load:
    """Steady scoring requests at a few URLs, a few clients each, every outcome recorded.

    Light on purpose (a pause between a client's requests) so it does not starve the machine.
    `phase` labels the requests that start from then on.
    """

    def __init__(
        self,
        targets: dict[str, str],
        clients: int = 2,
        pause_s: float = 0.1,
        timeout_s: float = 30.0,
        body: object = ONE_ROW,
    ) -> None:
        self.targets = targets  # label -> /invocations URL
        self.clients = clients
        self.pause_s = pause_s
        self.timeout_s = timeout_s  # the client's own: longer than any server-side bound
        self.body = json.dumps(body).encode()
        self.phase = "start"
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self._threads = [
            threading.Thread(target=self._drive, args=(target,), daemon=True)
            for target in self.targets
            for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)

    def _drive(self, target: str) -> None:
        headers = {"Content-Type": "application/json"}
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                phase, started = self.phase, time.monotonic()
                try:
                    answer = client.post(self.targets[target], content=self.body, headers=headers)
                    status, retry, error = (
                        answer.status_code, "retry-after" in answer.headers, ""
                    )  # fmt: skip
                    if status != 200:
                        error = answer.text[:200]
                except httpx.HTTPError as e:
                    status, retry, error = 0, False, f"{type(e).__name__}: {e}"
                duration = time.monotonic() - started
                outcome = Outcome(target, phase, started, duration, status, retry, error)
                self.outcomes.append(outcome)
                self._stop.wait(self.pause_s)

    def of(self, target: str, phase: str | None = None) -> list[Outcome]:
        """The outcomes of `target`, of one phase or of all."""
        return [
            o
            for o in list(self.outcomes)
            if o.target == target and (phase is None or o.phase == phase)
        ]

    def first_success(self, target: str, since: float) -> float | None:
        """When the first 200 of `target` among requests started at `since` or later ended."""
        ended = [o.ended for o in self.of(target) if o.status == 200 and o.started >= since]
        return min(ended, default=None)

    def summary(self) -> str:
        """Counts by phase and target: what pytest -s shows to help diagnose."""
        lines = []
        phases = list(dict.fromkeys(o.phase for o in self.outcomes))
        for phase in phases:
            for target in self.targets:
                done = self.of(target, phase)
                if not done:
                    continue
                by_status: dict[int, int] = {}
                for o in done:
                    by_status[o.status] = by_status.get(o.status, 0) + 1
                bare = sum(1 for o in done if o.status not in (0, 200) and not o.retry_after)
                longest = max(o.duration_s for o in done)
                lines.append(
                    f"{phase:<24} {target:<10} {len(done):>5} requests  statuses {by_status}  "
                    f"without Retry-After {bare}  longest {longest:.2f} s"
                )
        return "\n".join(lines)


@contextlib.contextmanager
def model_worker(log_path: Path, *options: str) -> Iterator[tuple[httpx.Client, subprocess.Popen]]:
    """A platform model server on a Unix socket handed over open, as `modelhost up` starts one."""
    sockets = Path(tempfile.mkdtemp(prefix="modelhost-worker-"))  # short: sockets allow ~100
    path = sockets / "1.sock"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    with bind_socket(path) as listener:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "worker", "--fd", str(listener.fileno()), *options],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(listener.fileno(),),
        )  # fmt: skip
    transport = httpx.HTTPTransport(uds=str(path))
    client = httpx.Client(transport=transport, base_url="http://model-server", timeout=60)
    try:
        eventually(lambda: _listens(path, process), timeout_s=120)
        assert client.get("/ping").status_code == 200
        yield client, process
    finally:
        client.close()
        stop_group(process, 30)
        log.close()
        shutil.rmtree(sockets)


@dataclasses.dataclass(frozen=True)
class TcpWorker:
    """A platform model server on a TCP port of 127.0.0.1, as a cluster node starts one."""

    port: int
    secret: str
    process: subprocess.Popen

    def client(self, secret: str | None = None) -> httpx.Client:
        """A client that sends `secret` (this server's own by default; "" for none)."""
        secret = self.secret if secret is None else secret
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=60)


@contextlib.contextmanager
def tcp_model_worker(log_path: Path, *options: str) -> Iterator[TcpWorker]:
    """A platform model server on a TCP socket bound to 127.0.0.1:0 and handed over open, with a
    fresh secret in MODELHOST_SERVER_SECRET."""
    secret = uuid.uuid4().hex
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    with socket.create_server(("127.0.0.1", 0)) as listener:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "worker", "--fd", str(listener.fileno()), *options],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(listener.fileno(),), env={**os.environ, "MODELHOST_SERVER_SECRET": secret},
        )  # fmt: skip
        worker = TcpWorker(listener.getsockname()[1], secret, process)
    try:
        with worker.client() as client:

            def pings() -> None:
                assert process.poll() is None, "the model server exited"
                try:
                    assert client.get("/ping").status_code == 200
                except httpx.TransportError:
                    raise AssertionError("not answering yet") from None

            eventually(pings, timeout_s=120)
        yield worker
    finally:
        stop_group(process, 30)
        log.close()


def _listens(path: Path, process: subprocess.Popen) -> None:
    """Refused until the server listens on the socket it was handed."""
    assert process.poll() is None, "the model server exited"
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            raise AssertionError("not listening yet") from None


# --- `modelhost batch` jobs in subprocesses, and their memory

BATCH_TIMEOUT_S = 180


def batch_command(model: str | Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "modelhost", "batch", str(model), *options]


def run_batch(
    model: str | Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`modelhost batch MODEL OPTIONS...` to its end; its output and exit code."""
    return subprocess.run(
        batch_command(model, "--env-manager", "local", *options),
        capture_output=True,
        text=True,
        timeout=BATCH_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


class Job:
    """`modelhost batch` started in a process group of its own, stopped with it at the end."""

    def __init__(self, model: str | Path, *options: str, log: Path, **popen: object) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                batch_command(model, "--env-manager", "local", *options),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float = BATCH_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, sig: signal.Signals, group: bool = False) -> None:
        (os.killpg if group else os.kill)(self.process.pid, sig)

    def stop(self) -> None:
        stop_group(self.process, grace_s=5)


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `check` until it returns something true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*"))


class MemoryCap:
    """Kills a process group when its memory grows past `cap_bytes` over its start-up footprint.

    Memory is the PSS of every process of the group (/proc/<pid>/smaps_rollup), so pages
    forked workers share with their parent count once. The start-up footprint is taken when
    `started()` first holds (the model is loaded), sampled every ~20 ms after that.
    """

    def __init__(self, group: int, cap_bytes: int, started: Callable[[], bool]) -> None:
        self.group, self.cap, self.started = group, cap_bytes, started
        self.baseline: int | None = None
        self.peak_growth = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            if self.baseline is None:
                if self.started():
                    self.baseline = group_pss(self.group)
                continue
            growth = group_pss(self.group) - self.baseline
            self.peak_growth = max(self.peak_growth, growth)
            if growth > self.cap:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.group, signal.SIGKILL)
                return


def group_pss(group: int) -> int:
    """Bytes of PSS of the processes in process group `group`."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != group:
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # a process that ended between the listing and the read
    return total


# --- PostgreSQL and nginx of the tests' own, for several `modelhost up` nodes

APT_TIMEOUT_S = 900
POSTGRES_TIMEOUT_S = 60  # initdb, a start or a stop: seconds normally, a minute on a busy machine


def apt_install(package: str, program: str) -> None:
    """Install Debian's `package` for tests that need `program`, or fail saying how by hand."""
    import pytest

    by_hand = f"Install {program} for these tests: `sudo apt-get install -y {package}`."
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(by_hand)
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_lock = ["-o", f"DPkg::Lock::Timeout={APT_TIMEOUT_S}"]  # another install may be running
    for command in (
        ["apt-get", *wait_lock, "update", "-q"],
        ["apt-get", *wait_lock, "install", "-y", "-q", package],
    ):
        done = subprocess.run(command, env=quiet, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}\n{by_hand}")


def stop_by_pid_file(pid_files: list[Path], sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the processes the pid files name and wait until they are gone."""
    for pid_file in pid_files:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, sig)
            wait_for(lambda pid=pid: _ended(pid), 30, f"{pid_file}'s {pid} to end")


def _ended(pid: int) -> bool:
    """Gone, or a zombie its parent has yet to reap (it holds no port or file any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def postgres_bin() -> Path:
    """The folder of the newest PostgreSQL server programs (initdb, pg_ctl), installing them
    with apt-get if there are none. A machine may have the client `psql` and no server."""

    def find() -> Path | None:
        debian = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        )
        if debian:
            return debian[-1].parent
        elsewhere = shutil.which("initdb")  # other systems put them on PATH
        return Path(elsewhere).parent if elsewhere else None

    found = find()
    if found is None:
        apt_install("postgresql", "the PostgreSQL server")
        # Where services may start, the package started a system server: it would outlive us.
        stop_by_pid_file(list(Path("/run/postgresql").glob("*.pid")))
        found = find()
        assert found, "apt-get installed postgresql, yet no initdb is in /usr/lib/postgresql"
    return found


class Postgres:
    """A PostgreSQL server of the tests' own on a free loopback port, with a throwaway cluster.

    `database(name)` makes a database and returns the URL a user would give modelhost. As
    root, the server runs as Debian's `postgres` user: PostgreSQL refuses to run as root.
    """

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        # Outside pytest's temporary folders, which are 0700 to root: the server must enter it.
        self.folder = Path(tempfile.mkdtemp(prefix="modelhost-test-postgres-"))
        self.data = self.folder / "data"  # also holds the Unix socket psql uses
        self.log_path = self.folder / "postgres.log"
        self.password = uuid.uuid4().hex  # the superuser's, for URLs over TCP
        self.stopped = False
        atexit.register(self.stop)  # a failing test never leaves a server running
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._initdb()

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    def _run(self, program: str, *args: str) -> None:
        """Run one of the server's programs as the user the server runs as."""
        command = [str(self.bin / program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, cwd=self.folder, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=POSTGRES_TIMEOUT_S + 30,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{self.log()}"
            )

    def _initdb(self) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password)
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                      "--auth-local=trust", "--auth-host=scram-sha-256",
                      "-E", "UTF8", "--locale=C")  # fmt: skip
        finally:
            pwfile.unlink()

    def start(self) -> Postgres:
        """Start the server (again, on the same port and data) and wait until it accepts."""
        options = " ".join([
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.data}",
            # Test data is thrown away: skipping disk flushes spares the shared machine's disk.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            "-c max_connections=300",  # several nodes, each with pools for MLflow and its state
        ])  # fmt: skip
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_path), "-w",
                  "-t", str(POSTGRES_TIMEOUT_S), "-o", options)  # fmt: skip
        return self

    def kill(self) -> None:
        """Stop the server at once, as a crash would, keeping its data for `start()`."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w",
                  "-t", str(POSTGRES_TIMEOUT_S))  # fmt: skip

    def restart(self) -> Postgres:
        """`kill()`, then `start()` on the same port: clients see the database go and come back."""
        self.kill()
        return self.start()

    def running(self) -> bool:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return not _ended(pid)

    def stop(self) -> None:
        """Stop the server and remove its cluster; once stopped, a second stop does nothing."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        try:
            if self.running():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                          "-t", str(POSTGRES_TIMEOUT_S))  # fmt: skip
        except BaseException:
            # SIGQUIT: PostgreSQL's immediate shutdown, which waits for no client.
            stop_by_pid_file([self.data / "postmaster.pid"], signal.SIGQUIT)
            raise
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        """The server's log, to show when a test fails."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run `statement` as the superuser over the Unix socket; its rows, unaligned."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-h", str(self.data), "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", statement],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed on {statement!r}:\n{done.stderr}")
        return done.stdout

    def database(self, name: str, own_role: bool = True) -> str:
        """Create database `name` and return its SQLAlchemy URL with a password over TCP.

        `own_role`: the database belongs to a role of the same name with its own password, as
        a user would set one up; otherwise the URL names the superuser.
        """
        if not (name.isascii() and name.isidentifier() and name == name.lower()):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        user, password = "postgres", self.password
        if own_role:
            user, password = name, uuid.uuid4().hex
            self.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        self.sql(f"CREATE DATABASE {name} OWNER {user}")
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{name}"


NGINX_TIMEOUT_S = 30


def nginx_config(listen_port: int, upstream_ports: list[int], prefix: Path) -> str:
    """nginx in front of identical modelhost nodes on this machine: the README's example.

    Scoring is retried on the next node even once sent (it has no side effects, so a request
    cut off by a dying node is safe to send again); anything else, such as a registry write,
    only when it never reached a node.
    """
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in upstream_ports
    )
    return f"""\
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream modelhost {{
        zone modelhost 64k;  # workers share which node is down
{servers}
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{listen_port};

        client_max_body_size 1g;  # MLflow's artifact uploads come through here
        proxy_http_version 1.1;  # with an empty Connection: pooled connections to the nodes
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;  # with its port: the page checks where it came from
        proxy_connect_timeout 1s;  # a node that is gone is refused at once; a hung one, not
        # Large artifact uploads and downloads stream through instead of filling a disk.
        proxy_request_buffering off;
        proxy_buffering off;

        location ~ ^/model/.+/invocations$ {{
            proxy_pass http://modelhost;
            # Buffered, so the whole body can be sent again to the next node.
            proxy_request_buffering on;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
        }}

        location / {{
            proxy_pass http://modelhost;
        }}
    }}
}}
"""


def nginx_program() -> str:
    """nginx, installed with apt-get if it is missing."""
    found = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if found:
        return found
    apt_install("nginx", "nginx")
    # Where services may start, the package started a system nginx on port 80: it would
    # outlive us.
    stop_by_pid_file([Path("/run/nginx.pid")])
    found = shutil.which("/usr/sbin/nginx")
    assert found, "apt-get installed nginx, yet there is no /usr/sbin/nginx"
    return found


class Nginx:
    """nginx on a free loopback port in front of modelhost nodes on `upstream_ports`, with
    `nginx_config()` in a folder of its own."""

    def __init__(self, upstream_ports: list[int]) -> None:
        self.program = nginx_program()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Outside pytest's folders (0700 to root): nginx's workers run as nobody under root.
        self.prefix = Path(tempfile.mkdtemp(prefix="modelhost-test-nginx-"))
        self.prefix.chmod(0o755)
        self.config_path = self.prefix / "nginx.conf"
        self.config_path.write_text(nginx_config(self.port, upstream_ports, self.prefix))
        self.log_path = self.prefix / "error.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    def start(self) -> Nginx:
        """Start nginx and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [self.program, "-p", str(self.prefix), "-c", str(self.config_path),
             "-e", str(self.log_path), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        atexit.register(self.stop)  # a failing test never leaves nginx running
        try:
            wait_for(self._accepts, NGINX_TIMEOUT_S, f"nginx to listen on {self.port}")
        except AssertionError as e:
            log = self.log()  # before `stop()` removes it
            self.stop()
            raise AssertionError(f"{e}:\n{log}") from None
        return self

    def _accepts(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"nginx exited with {self.process.returncode}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """Fast shutdown (SIGTERM) of nginx and its workers; a second stop does nothing."""
        atexit.unregister(self.stop)
        if self.process is not None:
            stop_group(self.process, NGINX_TIMEOUT_S)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def log(self) -> str:
        """nginx's error log, to show when a test fails."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no nginx log)"
