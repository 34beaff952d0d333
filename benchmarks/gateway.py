"""What the gateway costs: the same model scored through `modelhost up` and straight at its server.

Starts `modelhost up` with a fresh home, registers a 50-tree random forest, turns serving on,
then drives `/model/<name>/1/invocations` on the gateway and `/versions/1/invocations` on the
model server behind it with the same wrk load, in turns, and prints the share of throughput
the gateway keeps.

    ./dev python benchmarks/gateway.py [--duration 5] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import mlflow
import orjson
from serving import (
    WARMUP_S,
    BenchmarkError,
    WrkResult,
    ensure_wrk,
    free_port,
    iris_rows,
    median_run,
    positive_int,
    request_body,
    run_wrk,
    write_lua,
)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

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


def worker_port(up: subprocess.Popen[bytes]) -> int:
    """The model server's port, read from its command line: it is the gateway's child."""
    children = subprocess.run(
        ["pgrep", "-P", str(up.pid), "-f", "modelhost worker"], capture_output=True, text=True
    ).stdout.split()
    if len(children) != 1:
        raise BenchmarkError(f"expected one model server, found {children}")
    command = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
    return int(command[command.index(b"--port") + 1])


def run(args: argparse.Namespace) -> None:
    ensure_wrk()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="modelhost-gateway-bench-") as tmp:
        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        up = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "up", "--home", f"{tmp}/home", "--port", str(port)],
            stdout=open(f"{tmp}/up.log", "wb"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait(lambda: urllib.request.urlopen(f"{gateway}/health").status == 200, "up")
            register(gateway)
            get_json(f"{gateway}{API}/enable", {"registered_model_name": MODEL})
            wait(lambda: version_states(gateway) == ["VERSION_STATE_READY"], "version 1 ready")
            direct = f"http://127.0.0.1:{worker_port(up)}/versions/1/invocations"
            targets = {"gateway": f"{gateway}/model/{MODEL}/1/invocations", "direct": direct}
            body_file = Path(tmp) / "one-row.json"
            body_file.write_bytes(request_body(iris_rows(1)))
            lua = write_lua(body_file)
            runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
            for round_number in range(args.rounds):
                for name, url in targets.items():
                    if round_number == 0:
                        run_wrk(url, lua, args.connections, WARMUP_S)
                    measured = run_wrk(url, lua, args.connections, args.duration)
                    runs[name].append(measured)
                    print(
                        f"  round {round_number + 1} {name:<8} {measured.requests_per_s:>9.1f}"
                        f" req/s  p99 {measured.p99_ms:.1f} ms  errors {measured.errors}",
                        flush=True,
                    )
        finally:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
    medians = {name: median_run(measured) for name, measured in runs.items()}
    print(f"\n1-row requests, {args.connections} connections, median of {args.rounds} runs")
    for name, result in medians.items():
        print(
            f"{name:<8} {result.requests_per_s:>9.1f} req/s  p50 {result.p50_ms:.2f} ms"
            f"  p99 {result.p99_ms:.2f} ms  errors {result.errors}"
        )
    kept = medians["gateway"].requests_per_s / medians["direct"].requests_per_s
    print(f"the gateway keeps {kept:.0%} of the direct throughput")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=positive_int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=positive_int, default=3, help="runs per target")
    parser.add_argument("--connections", type=positive_int, default=16)
    try:
        run(parser.parse_args())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
