"""Compare MLflow model servers side by side: modelhost, `mlflow models serve` and MLServer.

Trains small iris models, serves each with every server in turn (same worker count), drives
POST /invocations with wrk and prints requests/s, p50/p99 latency and the ratios between servers.

    .venv/bin/python benchmarks/serving.py [--models rf,lr] [--loads 1row,100row] [--workers 1]
        [--duration 5] [--rounds 3] [--connections 16] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.pyfunc
import mlflow.sklearn
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
WARMUP_S = 2
# Rows per request of each load.
LOADS = {"1row": 1, "100row": 100}
MODELS: dict[str, Callable[[], object]] = {
    "rf": lambda: RandomForestClassifier(n_estimators=50, random_state=0),
    "lr": lambda: LogisticRegression(max_iter=1000),
}


class BenchmarkError(Exception):
    """A failure that ends the run with a message rather than a traceback."""


@dataclass(frozen=True)
class Server:
    name: str
    health_path: str
    # (model path, port, workers, scratch dir) -> command line.
    command: Callable[[Path, int, int, Path], list[str]]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


@dataclass(frozen=True)
class Result:
    model: str
    load: str
    server: str
    startup_s: float
    wrk: WrkResult


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def modelhost_command(model: Path, port: int, workers: int, _scratch: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "modelhost", "serve", "-m", str(model)),
        *("--host", HOST, "--port", str(port), "--workers", str(workers)),
    ]


def mlflow_command(model: Path, port: int, workers: int, _scratch: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model)),
        *("--env-manager", "local", "-h", HOST, "-p", str(port), "-w", str(workers)),
    ]


def mlserver_command(model: Path, port: int, workers: int, scratch: Path) -> list[str]:
    # MLServer takes its settings from files: server-wide in DIR, per model below it.
    root = scratch / "mlserver"
    (root / "model").mkdir(parents=True, exist_ok=True)
    settings = {
        "host": HOST,
        "http_port": port,
        # Its gRPC and metrics ports default to fixed numbers that may be taken.
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        # One worker means MLServer's own process predicts, as the other servers' one worker
        # does; its separate inference pool is for more than one.
        "parallel_workers": 0 if workers == 1 else workers,
        "debug": False,
    }
    model_settings = {
        "name": "model",
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model)},
    }
    (root / "settings.json").write_text(json.dumps(settings))
    (root / "model" / "model-settings.json").write_text(json.dumps(model_settings))
    return [sys.executable, "-m", "mlserver.cli.main", "start", str(root)]


def available_servers() -> list[Server]:
    servers = [
        Server("modelhost", "/ping", modelhost_command),
        Server("mlflow", "/ping", mlflow_command),
    ]
    if all(importlib.util.find_spec(name) for name in ("mlserver", "mlserver_mlflow")):
        servers.append(Server("mlserver", "/v2/models/model/ready", mlserver_command))
    else:
        print("note: mlserver and mlserver_mlflow are not installed; skipping MLServer")
    return servers


def server_env() -> dict[str, str]:
    # `mlflow models serve` runs `uvicorn` from PATH, which has no virtualenv unless activated.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused while starting, or an HTTP error status
        return False


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(
                f"server exited with code {proc.returncode} before it was ready; its log:\n"
                + log_tail(log)
            )
        if answers_200(url):
            return
        time.sleep(0.2)
    raise BenchmarkError(
        f"{url} did not answer 200 in {READY_TIMEOUT_S:.0f} s; log:\n" + log_tail(log)
    )


@contextlib.contextmanager
def platform(
    home: Path, log: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`modelhost up` with its own home, ready; Ctrl-C'd (then killed) on the way out."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "up", "--home", str(home), "--port", str(port),
             *options],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        wait_ready(up, f"{url}/health", log)
        yield url, up
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole process group, SIGKILL whatever outlives the grace period."""
    pgid = proc.pid  # start_new_session made the server its group's leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        # Workers may outlive the leader, so wait for the group, reaping the leader meanwhile.
        while time.monotonic() < deadline and group_alive(pgid):
            proc.poll()
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def running_server(server: Server, model: Path, workers: int, scratch: Path) -> Iterator[str]:
    """Start `server`, yield its base URL once healthy, and always stop it afterwards."""
    port = free_port()
    log = scratch / f"{server.name}.log"
    command = server.command(model, port, workers, scratch)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,
        )
    try:
        base = f"http://{HOST}:{port}"
        wait_ready(proc, base + server.health_path, log)
        yield base
    finally:
        stop_group(proc)


# --- models and requests -----------------------------------------------------------------------


def save_models(names: list[str], directory: Path) -> dict[str, Path]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    paths = {}
    for name in names:
        model = MODELS[name]()
        model.fit(X, y)  # type: ignore[attr-defined]
        paths[name] = directory / name
        # skops refuses to load the forest's Tree type unless it is trusted explicitly.
        mlflow.sklearn.save_model(
            model,
            str(paths[name]),
            input_example=X.head(2),
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    return paths


def iris_rows(rows: int) -> pd.DataFrame:
    X, _ = load_iris(return_X_y=True, as_frame=True)
    return X.head(rows)


def request_body(frame: pd.DataFrame) -> bytes:
    split = {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}
    return json.dumps({"dataframe_split": split}).encode()


def post_json(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check_answer(server: str, url: str, body: bytes, expected: list[object]) -> None:
    """Fail unless the server answers 200 with the predictions the model itself makes."""
    status, payload = post_json(url + "/invocations", body)
    if status != 200:
        raise BenchmarkError(f"{server} answered {status}: {payload[:500]!r}")
    predictions = json.loads(payload).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(expected):
        raise BenchmarkError(f"{server} answered no list of {len(expected)} predictions")
    if predictions != expected:
        raise BenchmarkError(f"{server} predicted {predictions[:10]}, expected {expected[:10]}")


# --- wrk ---------------------------------------------------------------------------------------


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("wrk is not installed; running: apt-get update -qq && apt-get install -y -qq wrk")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise BenchmarkError(f"could not install wrk ({error}); install it and rerun") from error
    if not shutil.which("wrk"):
        raise BenchmarkError("wrk is still not on PATH after installing it")


def write_lua(body_file: Path) -> Path:
    # The body lives in its own file so Lua never has to quote JSON.
    script = body_file.with_suffix(".lua")
    script.write_text(
        f"local f = assert(io.open({json.dumps(str(body_file))}, 'rb'))\n"
        "wrk.method = 'POST'\n"
        "wrk.body = f:read('*a')\n"
        "f:close()\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    return script


TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_latency_ms(output: str, percentile: int) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    if not match:
        raise BenchmarkError(f"no p{percentile} latency in wrk output:\n{output}")
    return float(match.group(1)) * TIME_UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    if not rate or not total:
        raise BenchmarkError(f"unexpected wrk output:\n{output}")
    # wrk prints these two lines only when their counts are not zero.
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        requests_per_s=float(rate.group(1)),
        p50_ms=parse_latency_ms(output, 50),
        p99_ms=parse_latency_ms(output, 99),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
    )


def run_wrk(url: str, lua: Path, connections: int, duration_s: int) -> WrkResult:
    threads = min(2, connections)  # wrk needs at least one connection per thread
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    completed = subprocess.run(
        [*command, "-s", str(lua), url],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"wrk failed ({completed.returncode}):\n{completed.stderr}")
    return parse_wrk(completed.stdout)


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    name: str
    body: bytes
    lua: Path


def prepare_loads(names: list[str], scratch: Path) -> list[Load]:
    loads = []
    for name in names:
        body = request_body(iris_rows(LOADS[name]))
        body_file = scratch / f"{name}.json"
        body_file.write_bytes(body)
        loads.append(Load(name, body, write_lua(body_file)))
    return loads


def expected_predictions(model: Path, loads: list[Load]) -> dict[str, list[object]]:
    loaded = mlflow.pyfunc.load_model(str(model))
    return {load.name: loaded.predict(iris_rows(LOADS[load.name])).tolist() for load in loads}


def bench_model(
    name: str, model: Path, servers: list[Server], loads: list[Load], args: argparse.Namespace
) -> list[Result]:
    """Start every server at once, then measure them in turns, round after round.

    An idle server costs no CPU, and interleaving spreads the machine's noise (other tenants,
    frequency changes) over all of them instead of letting it fall on whichever ran at the time.
    """
    expected = expected_predictions(model, loads)
    with contextlib.ExitStack() as stack:
        bases, startup = {}, {}
        for server in servers:
            scratch = Path(tempfile.mkdtemp(prefix=f"{server.name}-", dir=model.parent))
            started = time.monotonic()
            bases[server.name] = stack.enter_context(
                running_server(server, model, args.workers, scratch)
            )
            startup[server.name] = time.monotonic() - started
            print(f"  {server.name} ready in {startup[server.name]:.1f} s", flush=True)
            for load in loads:
                check_answer(server.name, bases[server.name], load.body, expected[load.name])
        runs: dict[tuple[str, str], list[WrkResult]] = {}
        for round_number in range(args.rounds):
            for load in loads:
                for server in servers:
                    url = bases[server.name] + "/invocations"
                    if round_number == 0:
                        run_wrk(url, load.lua, args.connections, WARMUP_S)
                    measured = run_wrk(url, load.lua, args.connections, args.duration)
                    runs.setdefault((server.name, load.name), []).append(measured)
                    print(
                        f"  round {round_number + 1} {server.name:<10} {load.name:<7}"
                        f" {measured.requests_per_s:>9.1f} req/s  p99 {measured.p99_ms:.1f} ms",
                        flush=True,
                    )
    return [
        Result(name, load, server, startup[server], median_run(measured))
        for (server, load), measured in runs.items()
    ]


def median_run(runs: list[WrkResult]) -> WrkResult:
    """Each figure's median over the rounds; errors are summed."""
    return WrkResult(
        requests=sum(r.requests for r in runs),
        requests_per_s=statistics.median(r.requests_per_s for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
    )


def ratio_line(ours: WrkResult, theirs: WrkResult, other: str) -> str:
    rate = ours.requests_per_s / theirs.requests_per_s if theirs.requests_per_s else float("inf")
    p99 = theirs.p99_ms / ours.p99_ms if ours.p99_ms else float("inf")
    return f"modelhost vs {other}: {rate:.1f}x requests/s, p99 {p99:.1f}x lower"


def print_table(model: str, load: str, rows: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{model} / {load}  ({args.connections} connections, median of {args.rounds} runs"
        f" of {args.duration} s, {args.workers} worker(s))"
    )
    print(f"{'server':<10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for row in rows:
        w = row.wrk
        print(
            f"{row.server:<10} {w.requests_per_s:>11.1f} {w.p50_ms:>8.2f} {w.p99_ms:>8.2f}"
            f" {w.errors:>7}"
        )
    by_server = {row.server: row.wrk for row in rows}
    ours = by_server.get("modelhost")
    for other, theirs in by_server.items():
        if ours and other != "modelhost":
            print(ratio_line(ours, theirs, other))


def report(results: list[Result], args: argparse.Namespace) -> None:
    for model in dict.fromkeys(r.model for r in results):
        for load in dict.fromkeys(r.load for r in results):
            rows = [r for r in results if r.model == model and r.load == load]
            print_table(model, load, rows, args)


def write_json(path: Path, results: list[Result], args: argparse.Namespace) -> None:
    config = {
        "workers": args.workers,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "warmup_s": WARMUP_S,
    }
    rows = [{**asdict(r), "wrk": {**asdict(r.wrk), "errors": r.wrk.errors}} for r in results]
    path.write_text(json.dumps({"config": config, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {path}")


def choices(allowed: dict[str, object]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return names

    return parse


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=choices(MODELS), default=list(MODELS), help="default: rf,lr"
    )
    parser.add_argument(
        "--loads", type=choices(LOADS), default=list(LOADS), help="default: 1row,100row"
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="per server; default: 1")
    parser.add_argument(
        "--duration", type=positive_int, default=5, help="seconds per run; default: 5"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="runs per server, reported as medians"
    )
    parser.add_argument("--connections", type=positive_int, default=16, help="default: 16")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    return parser.parse_args(argv)


def quiet_training_noise() -> None:
    # Saving a model warns about pandas and pip details that say nothing about serving.
    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> None:
    ensure_wrk()
    # Servers and wrk share the cores with everything else: a busy machine skews the numbers.
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    servers = available_servers()
    quiet_training_noise()
    with tempfile.TemporaryDirectory(prefix="modelhost-bench-") as tmp:
        print(f"saving models {', '.join(args.models)} to {tmp}", flush=True)
        paths = save_models(args.models, Path(tmp))
        loads = prepare_loads(args.loads, Path(tmp))
        results = []
        for name, path in paths.items():
            print(f"\n{name}:", flush=True)
            results += bench_model(name, path, servers, loads, args)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    report(results, args)
    if args.json:
        write_json(args.json, results, args)


def run_benchmark(run: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a benchmark to its exit code: its errors are one line, and a plain `kill` of it
    still stops the servers it started (their context managers run)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
