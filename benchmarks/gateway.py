"""What the gateway costs: the same model scored through `modelhost up` and straight at a server.

Starts `modelhost up` with a fresh home, registers a 50-tree random forest, turns serving on,
then drives `/model/<name>/1/invocations` on the gateway and `/invocations` of a `modelhost
serve` of the same model (the copy the platform fetched, one worker, the platform's batching
settings) with the same wrk load, in turns, and prints the share of throughput the gateway
keeps. Platform model servers listen only on a socket the gateway holds, so the direct path is
the server a user would run by hand, not the one behind the gateway.

    ./dev python benchmarks/gateway.py [--duration 5] [--rounds 3] [--connections 16,64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import mlflow
import orjson
from processes import cpu_seconds, model_server_of
from serving import (
    WARMUP_S,
    BenchmarkError,
    WrkResult,
    ensure_wrk,
    free_port,
    iris_rows,
    median_run,
    platform,
    positive_int,
    request_body,
    run_wrk,
    server_env,
    stop_group,
    wait_ready,
    write_lua,
)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from modelhost.config import ServeSettings
from modelhost.control.servers import server_log

API = "/api/2.0/preview/mlflow/endpoints"
MODEL = "bench-forest"


def get_json(url: str, body: dict | None = None) -> dict:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def wait(check, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise BenchmarkError(f"{what} did not happen within {timeout_s:g} s")


def version_states(gateway: str) -> list[str]:
    shown = get_json(f"{gateway}{API}/list-versions?registered_model_name={MODEL}")
    return [version["state"] for version in shown["endpoint_versions"]]


def register(url: str) -> None:
    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    mlflow.set_tracking_uri(url)
    features, species = load_iris(return_X_y=True, as_frame=True)
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(features, species)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            forest,
            name="model",
            input_example=features.head(2),
            registered_model_name=MODEL,
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )


def worker_pid(up: subprocess.Popen[bytes], home: Path) -> int:
    """The model server of the model: the process writing its log (forked or fresh)."""
    found = model_server_of(up.pid, server_log(home.resolve() / "logs", MODEL))
    if found is None:
        raise BenchmarkError(f"found no model server of {MODEL}")
    return found


def fetched_model(home: Path) -> Path:
    """The folder of version 1 the platform fetched (holding its MLmodel)."""
    found = list((home / "models").glob("*/1/**/MLmodel"))
    if len(found) != 1:
        raise BenchmarkError(f"expected one fetched version 1, found {found}")
    return found[0].parent


@contextlib.contextmanager
def direct_server(model: Path, log: Path) -> Iterator[tuple[str, int]]:
    """`modelhost serve` of `model` as the platform serves it; its URL and process id."""
    port = free_port()
    settings = ServeSettings(model_uri=str(model))  # the platform's model servers' defaults
    command = [
        sys.executable, "-m", "modelhost", "serve", "-m", str(model), "--port", str(port),
        "--workers", "1", "--env-manager", "local",
        "--max-batch-size", str(settings.max_batch_size),
        "--max-batch-delay-ms", str(settings.max_batch_delay_ms),
    ]  # fmt: skip
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=server_env(),
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(server, f"{url}/ping", log)
        yield f"{url}/invocations", server.pid
    finally:
        stop_group(server)


def run(args: argparse.Namespace) -> None:
    ensure_wrk()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with (
        tempfile.TemporaryDirectory(prefix="modelhost-gateway-bench-") as tmp,
        platform(Path(tmp) / "home", Path(tmp) / "up.log") as (gateway, up),
    ):
        register(gateway)
        get_json(f"{gateway}{API}/enable", {"registered_model_name": MODEL})
        wait(lambda: version_states(gateway) == ["VERSION_STATE_READY"], "version 1 ready")
        worker = worker_pid(up, Path(tmp) / "home")
        model = fetched_model(Path(tmp) / "home")
        with direct_server(model, Path(tmp) / "serve.log") as (direct, server):
            targets = {
                "gateway": (f"{gateway}/model/{MODEL}/1/invocations", (up.pid, worker)),
                "direct": (direct, (up.pid, server)),
            }
            body_file = Path(tmp) / "one-row.json"
            body_file.write_bytes(request_body(iris_rows(1)))
            lua = write_lua(body_file)
            results = {c: measure(targets, lua, c, args) for c in args.connections}
    print(f"\n1-row requests, median of {args.rounds} runs; CPU: microseconds per request")
    print(f"{'connections':>11} {'path':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'gateway CPU':>11} {'server CPU':>10} {'errors':>6}")  # fmt: skip
    for connections, (medians, cpu) in results.items():
        for name, result in medians.items():
            gateway_cpu, server_cpu = cpu[name]
            print(
                f"{connections:>11} {name:<8} {result.requests_per_s:>9.1f} "
                f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {gateway_cpu:>11.0f} "
                f"{server_cpu:>10.0f} {result.errors:>6}"
            )
        kept = medians["gateway"].requests_per_s / medians["direct"].requests_per_s
        print(f"{connections:>11} the gateway keeps {kept:.0%} of the direct throughput")


def measure(
    targets: dict[str, tuple[str, tuple[int, int]]],
    lua: Path,
    connections: int,
    args: argparse.Namespace,
) -> tuple[dict[str, WrkResult], dict[str, tuple[float, float]]]:
    """Each target's median run, and the CPU microseconds per request of gateway and server.

    A target is its URL and the process ids of the gateway and of the model server it reaches.
    """
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    cpu: dict[str, list[tuple[float, ...]]] = {name: [] for name in targets}
    groups = {name: (url, [(pid,) for pid in pids]) for name, (url, pids) in targets.items()}
    for name, measured, used in in_turns(groups, lua, connections, args):
        runs[name].append(measured)
        cpu[name].append(tuple(1e6 * u / max(measured.requests, 1) for u in used))
    medians = {name: median_run(measured) for name, measured in runs.items()}
    cpu_medians = {
        name: tuple(statistics.median(column) for column in zip(*per_run, strict=True))
        for name, per_run in cpu.items()
    }
    return medians, cpu_medians  # type: ignore[return-value]


def in_turns(
    targets: dict[str, tuple[str, Sequence[Sequence[int]]]],
    lua: Path,
    connections: int,
    args: argparse.Namespace,
) -> Iterator[tuple[str, WrkResult, list[float]]]:
    """Each target's runs, in turns round after round (warmed up in the first), with the CPU
    seconds each of its groups of processes used during the run.

    A target is its URL and groups of process ids, each group's CPU summed.
    """
    for round_number in range(args.rounds):
        for name, (url, groups) in targets.items():
            if round_number == 0:
                run_wrk(url, lua, connections, WARMUP_S)
            before = [sum(map(cpu_seconds, group)) for group in groups]
            measured = run_wrk(url, lua, connections, args.duration)
            used = [sum(map(cpu_seconds, g)) - b for g, b in zip(groups, before, strict=True)]
            print(
                f"  {connections} connections, round {round_number + 1}, {name:<8} "
                f"{measured.requests_per_s:>9.1f} req/s  p99 {measured.p99_ms:.1f} ms  "
                f"errors {measured.errors}",
                flush=True,
            )
            yield name, measured, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=positive_int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=positive_int, default=3, help="runs per target")
    parser.add_argument(
        "--connections",
        type=lambda text: [positive_int(c) for c in text.split(",")],
        default=[16, 64],
        help="comma-separated concurrency levels (default: 16,64)",
    )
    try:
        run(parser.parse_args())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
