"""The gateway to Ray-placed model servers against local ones: the same model, the same load.

Starts a one-node Ray cluster on this machine (its head on 127.0.0.1, 2 logical CPUs, with
token auth), then two platforms side by side, each with a fresh home: `modelhost up` (model
servers as local processes, reached over Unix sockets) and `modelhost up --engine ray
--ray-address <head>` (each model server a process owned by a Ray actor, reached over TCP with
its secret). Registers the same 50-tree random forest on each, turns serving on, checks that
both answer with the forest's own predictions, then drives `/model/<name>/1/invocations` on both
gateways with the same wrk load, in turns, and prints the share of the local throughput the
Ray-placed server keeps (the target: at least 90%). Everything it starts, the cluster included,
is stopped at the end, on an error or Ctrl-C too.

    ./dev python benchmarks/cluster.py [--duration 5] [--rounds 3] [--connections 16,64]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway import API, MODEL, get_json, in_turns, register, version_states, wait, worker_pid
from processes import command_line, descendants, parents, stop_leftovers
from serving import (
    BenchmarkError,
    WrkResult,
    check_answer,
    ensure_wrk,
    iris_rows,
    median_run,
    platform,
    positive_int,
    request_body,
    run_benchmark,
    write_lua,
)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

REPLICA_HOST = b"ray::ReplicaHost"
# Ray reads its settings from RAY_<name>, the name in its own (lower) case.


@dataclass(frozen=True)
class Target:
    """One path to the model: its URL, its gateway, its model server, and Ray's processes."""

    url: str
    gateway: int
    server: int
    ray: tuple[int, ...]


@dataclass(frozen=True)
class Cpu:
    """CPU microseconds per request of the gateway and of the model server, and the share of
    one core Ray's own processes (raylet, GCS, actors) used during the run."""

    gateway_us: float
    server_us: float
    ray_share: float


@contextlib.contextmanager
def ray_cluster(scratch: Path) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with token auth; its address. Shut down, processes and all."""
    # Ray reads these when imported and when it starts a node; `up --engine ray` inherits them
    # (the token to join, and Ray kept on 127.0.0.1). The node's modelhost home is the
    # scratch folder's, not the user's.
    os.environ.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        MODELHOST_HOME=str(scratch / "nodes"),
    )
    from ray.cluster_utils import Cluster

    os.makedirs("/tmp/ray", exist_ok=True)  # Cluster writes /tmp/ray/ray_current_cluster
    # A short path: Ray's Unix sockets live below it, and their paths are limited to 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    head = dict(
        num_cpus=2, object_store_memory=80 * 2**20, node_ip_address="127.0.0.1",
        temp_dir=ray_tmp, include_dashboard=False, include_log_monitor=False, no_monitor=True,
    )  # fmt: skip
    cluster = None
    try:
        print("starting a Ray head on 127.0.0.1", flush=True)
        cluster = Cluster(initialize_head=True, head_node_args=head)
        yield cluster.address
    finally:
        # The platforms have stopped by now: what runs below this process is the cluster's
        # (GCS, raylet, its workers and agents). The list is taken before the shutdown, so
        # that a worker it orphans is still found and killed.
        started = descendants(os.getpid())[1:]
        if cluster is not None:
            cluster.shutdown()
        stop_leftovers(started)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _name(pid: int) -> bytes:
    """A process's name as `ps` shows it (Ray's workers rename themselves `ray::<Actor>`)."""
    return (command_line(pid) or [b""])[0].strip()


def ray_placed_server() -> int:
    """The model server a Ray actor owns: the `modelhost worker` below `ray::ReplicaHost`."""
    parent_of = parents()
    servers = [
        pid for pid in descendants(os.getpid(), parent_of)[1:]
        if _name(parent_of.get(pid, 0)).startswith(REPLICA_HOST) and b"worker" in command_line(pid)
    ]  # fmt: skip
    if len(servers) != 1:
        raise BenchmarkError(f"expected one model server below a ReplicaHost actor: {servers}")
    return servers[0]


def forest_predictions() -> list[object]:
    """What the registered forest predicts for the request's row (gateway.register trains it)."""
    features, species = load_iris(return_X_y=True, as_frame=True)
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(features, species)
    return forest.predict(iris_rows(1)).tolist()


def serve_forest(gateway: str) -> None:
    register(gateway)
    get_json(f"{gateway}{API}/enable", {"registered_model_name": MODEL})
    wait(
        lambda: version_states(gateway) == ["VERSION_STATE_READY"], f"version 1 ready on {gateway}"
    )


def run(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("ray") is None:
        raise BenchmarkError("Ray is not installed: ./dev uv pip install 'modelhost[ray]'")
    ensure_wrk()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with (
        tempfile.TemporaryDirectory(prefix="modelhost-cluster-bench-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(scratch)
        head = stack.enter_context(ray_cluster(tmp))
        local, local_up = stack.enter_context(platform(tmp / "local", tmp / "local.log"))
        on_ray, ray_up = stack.enter_context(
            platform(tmp / "ray", tmp / "ray.log", "--engine", "ray", "--ray-address", head)
        )
        print(f"platforms ready: local {local}, Ray-placed {on_ray}", flush=True)
        serve_forest(local)
        serve_forest(on_ray)
        body = request_body(iris_rows(1))
        expected = forest_predictions()
        for name, url in (("local", local), ("ray", on_ray)):
            check_answer(name, f"{url}/model/{MODEL}/1", body, expected)
        server = ray_placed_server()
        # Ray's own processes: everything below this one but the platforms and the server.
        platforms = {*descendants(local_up.pid), *descendants(ray_up.pid), server}
        ray_pids = tuple(p for p in descendants(os.getpid())[1:] if p not in platforms)
        targets = {
            "local": Target(
                f"{local}/model/{MODEL}/1/invocations", local_up.pid,
                worker_pid(local_up, tmp / "local"), ray_pids,
            ),
            "ray": Target(f"{on_ray}/model/{MODEL}/1/invocations", ray_up.pid, server, ray_pids),
        }  # fmt: skip
        # A busy machine gives a niced process less of its CPU: say what each server runs at.
        niceness = {name: os.getpriority(os.PRIO_PROCESS, t.server) for name, t in targets.items()}
        print("model servers' niceness: " + ", ".join(f"{n} {v}" for n, v in niceness.items()))
        body_file = tmp / "one-row.json"
        body_file.write_bytes(body)
        lua = write_lua(body_file)
        results = {c: measure(targets, lua, c, args) for c in args.connections}
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    report(results, args)


def measure(
    targets: dict[str, Target], lua: Path, connections: int, args: argparse.Namespace
) -> tuple[dict[str, WrkResult], dict[str, Cpu]]:
    """Each target's median run and median CPU, measured in turns round after round."""
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    cpu: dict[str, list[Cpu]] = {name: [] for name in targets}
    groups = {name: (t.url, [(t.gateway,), (t.server,), t.ray]) for name, t in targets.items()}
    for name, measured, (gateway, server, ray) in in_turns(groups, lua, connections, args):
        requests = max(measured.requests, 1)
        runs[name].append(measured)
        cpu[name].append(
            Cpu(1e6 * gateway / requests, 1e6 * server / requests, ray / args.duration)
        )
    medians = {name: median_run(measured) for name, measured in runs.items()}
    cpu_medians = {
        name: Cpu(
            statistics.median(c.gateway_us for c in per_run),
            statistics.median(c.server_us for c in per_run),
            statistics.median(c.ray_share for c in per_run),
        )
        for name, per_run in cpu.items()
    }
    return medians, cpu_medians


def report(
    results: dict[int, tuple[dict[str, WrkResult], dict[str, Cpu]]], args: argparse.Namespace
) -> None:
    print(
        f"\n1-row requests, median of {args.rounds} runs of {args.duration} s; gateway and "
        "server CPU: microseconds per request; Ray CPU: share of one core the cluster's own "
        "processes used"
    )
    print(f"{'connections':>11} {'path':<5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'gateway CPU':>11} {'server CPU':>10} {'Ray CPU':>7} {'errors':>6}")  # fmt: skip
    for connections, (medians, cpu) in results.items():
        for name, result in medians.items():
            used = cpu[name]
            print(
                f"{connections:>11} {name:<5} {result.requests_per_s:>9.1f} "
                f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {used.gateway_us:>11.0f} "
                f"{used.server_us:>10.0f} {used.ray_share:>7.0%} {result.errors:>6}"
            )
        kept = medians["ray"].requests_per_s / medians["local"].requests_per_s
        print(
            f"{connections:>11} the Ray-placed server keeps {kept:.0%} of the local throughput "
            "(target: 90% or more)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=positive_int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=positive_int, default=3, help="runs per path")
    parser.add_argument(
        "--connections",
        type=lambda text: [positive_int(c) for c in text.split(",")],
        default=[16, 64],
        help="comma-separated concurrency levels (default: 16,64)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
