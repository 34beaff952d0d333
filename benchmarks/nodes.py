"""Several nodes: scoring throughput of one node on SQLite, one on PostgreSQL, two behind nginx.

Starts `modelhost up` with its defaults (SQLite state, embedded SQLite registry) and two nodes
on one PostgreSQL server of the benchmark's own (one state database, one registry database, one
shared artifact folder; different homes, ports and node names), registers the same 50-tree
random forest on both setups and turns serving on, checks every node answers with the model's
own predictions, then drives `/model/<name>/1/invocations` with the same wrk load, in turns:
the SQLite node, the first PostgreSQL node, nginx (the README's configuration) in front of that
node alone, and nginx in front of both. Prints medians, the ratios PostgreSQL/SQLite (scoring
never touches the database, so they should be equal within noise) and nginx/one node, and how
many of the requests through nginx each node answered (from its /metrics). Before measuring,
it takes each platform's CPU over 10 s while nobody scores: the background work the scoring
shares the cores with.

    ./dev python benchmarks/nodes.py [--loads 1row,100row] [--duration 5] [--rounds 3]
        [--connections 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import mlflow.pyfunc
import orjson
from gateway import API, MODEL, register, wait
from processes import CpuShare, idle_cpu
from prometheus_client.parser import text_string_to_metric_families
from serving import (
    LOADS,
    WARMUP_S,
    BenchmarkError,
    WrkResult,
    check_answer,
    choices,
    ensure_wrk,
    iris_rows,
    median_run,
    platform,
    positive_int,
    post_json,
    quiet_training_noise,
    request_body,
    run_benchmark,
    run_wrk,
    write_lua,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import Nginx, Postgres  # noqa: E402  (the tests' own PostgreSQL server and nginx)

NODES = ("node-a", "node-b")
NOISE = 0.10  # PostgreSQL/SQLite this close to 1 is "equal within noise"
IDLE_WINDOW_S = 10.0
SQLITE, POSTGRES, NGINX_ONE, NGINX_TWO = "sqlite", "postgres", "nginx→1 node", "nginx→2 nodes"


@dataclass(frozen=True)
class Result:
    target: str
    load: str
    wrk: WrkResult  # medians over the rounds
    spread: float  # (fastest - slowest round) / median requests/s: the noise it saw


@dataclass(frozen=True)
class Targets:
    """Scoring URLs by target, the gateway URL of each PostgreSQL node by name, and the
    process id of each platform's `up` (the SQLite one and the nodes)."""

    scoring: dict[str, str]
    nodes: dict[str, str]
    ups: dict[str, int]


# --- the platforms -----------------------------------------------------------------------------


def serve_forest(gateway: str, rows: dict[str, int]) -> dict[str, list[object]]:
    """Register the forest through `gateway`, turn serving on; each load's expected answer."""
    register(gateway)
    body = orjson.dumps({"registered_model_name": MODEL, "env_manager": "local"})
    status, answer = post_json(f"{gateway}{API}/enable", body)
    if status != 200:
        raise BenchmarkError(f"could not enable {MODEL}: {status} {answer[:300]!r}")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")  # through the gateway's registry
    return {load: model.predict(iris_rows(n)).tolist() for load, n in rows.items()}


def check_serves(
    name: str, gateway: str, bodies: dict[str, bytes], expected: dict[str, list[object]]
) -> None:
    """Wait until `gateway` scores the model, then check its answer to every load."""
    url = f"{gateway}/model/{MODEL}/1/invocations"
    first = next(iter(bodies.values()))
    wait(lambda: post_json(url, first)[0] == 200, f"{name} serving {MODEL}")
    for load, body in bodies.items():
        check_answer(name, f"{gateway}/model/{MODEL}/1", body, expected[load])
    print(f"  {name} serves {MODEL}", flush=True)


def start_all(stack: ExitStack, scratch: Path, loads: list[str]) -> Targets:
    """Every platform and nginx, each stopped by `stack`, serving the forest on every node."""
    rows = {load: LOADS[load] for load in loads}
    bodies = {load: request_body(iris_rows(n)) for load, n in rows.items()}

    print("starting modelhost up (SQLite state, embedded SQLite registry)", flush=True)
    sqlite, up = stack.enter_context(platform(scratch / "sqlite", scratch / "sqlite.log"))
    ups = {SQLITE: up.pid}
    check_serves(SQLITE, sqlite, bodies, serve_forest(sqlite, rows))

    print("starting PostgreSQL and two nodes on it", flush=True)
    postgres = stack.enter_context(Postgres())
    shared = {
        # Variables rather than flags: the URLs hold passwords.
        "MODELHOST_STATE_URI": postgres.database("bench_state"),
        "MODELHOST_REGISTRY_URI": postgres.database("bench_registry"),
        "MODELHOST_ARTIFACTS_DESTINATION": str(scratch / "shared-artifacts"),
    }
    nodes = {}
    for name in NODES:
        home, log = scratch / name, scratch / f"{name}.log"
        env = {**shared, "MODELHOST_NODE_NAME": name}
        nodes[name], up = stack.enter_context(platform(home, log, env=env))
        ups[name] = up.pid
    first = nodes[NODES[0]]
    expected = serve_forest(first, rows)  # the other node follows the shared state
    for name, gateway in nodes.items():
        check_serves(name, gateway, bodies, expected)

    ports = [urlsplit(gateway).port for gateway in nodes.values()]
    one = stack.enter_context(Nginx(ports[:1]))
    two = stack.enter_context(Nginx(ports))
    check_serves(NGINX_ONE, one.url, bodies, expected)
    check_serves(NGINX_TWO, two.url, bodies, expected)
    path = f"/model/{MODEL}/1/invocations"
    scoring = {SQLITE: sqlite, POSTGRES: first, NGINX_ONE: one.url, NGINX_TWO: two.url}
    return Targets({target: base + path for target, base in scoring.items()}, nodes, ups)


def answered(gateway: str) -> int:
    """Scoring requests `gateway` has answered 200 for the model, from its /metrics."""
    with urllib.request.urlopen(f"{gateway}/metrics", timeout=30) as response:
        text = response.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "modelhost_gateway_requests_total"
            and sample.labels.get("model_name") == MODEL
            and sample.labels.get("status_code") == "200"
        )
    )


def idle_shares(ups: dict[str, int]) -> dict[str, CpuShare]:
    """Each platform's CPU over one window while nobody scores: the background work each
    does (its controller reading the registry and the state store), which scoring shares
    the cores with."""
    with ThreadPoolExecutor(len(ups)) as pool:
        shares = pool.map(lambda pid: idle_cpu(pid, IDLE_WINDOW_S), ups.values())
        return dict(zip(ups, shares, strict=True))


# --- the run -----------------------------------------------------------------------------------


def measure(
    targets: Targets, lua: dict[str, Path], args: argparse.Namespace
) -> tuple[list[Result], dict[str, int]]:
    """Every target's median per load, in turns round after round; and how many of the
    requests sent through nginx to both nodes each node answered."""
    runs: dict[tuple[str, str], list[WrkResult]] = {}
    through_nginx = dict.fromkeys(targets.nodes, 0)
    for round_number in range(args.rounds):
        for load, script in lua.items():
            for target, url in targets.scoring.items():
                if round_number == 0:
                    run_wrk(url, script, args.connections, WARMUP_S)
                counted = target == NGINX_TWO
                before = {n: answered(g) for n, g in targets.nodes.items()} if counted else {}
                measured = run_wrk(url, script, args.connections, args.duration)
                if counted:
                    for name, gateway in targets.nodes.items():
                        through_nginx[name] += answered(gateway) - before[name]
                runs.setdefault((target, load), []).append(measured)
                print(
                    f"  round {round_number + 1} {target:<14} {load:<7}"
                    f" {measured.requests_per_s:>9.1f} req/s  p99 {measured.p99_ms:.1f} ms"
                    f"  errors {measured.errors}",
                    flush=True,
                )
    results = [
        Result(target, load, median_run(measured), spread(measured))
        for (target, load), measured in runs.items()
    ]
    return results, through_nginx


def spread(runs: list[WrkResult]) -> float:
    rates = [r.requests_per_s for r in runs]
    middle = median_run(runs).requests_per_s
    return (max(rates) - min(rates)) / middle if middle else 0.0


def ratio(ours: WrkResult, theirs: WrkResult) -> float:
    return ours.requests_per_s / theirs.requests_per_s if theirs.requests_per_s else float("inf")


def ratios(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per load: PostgreSQL/SQLite, nginx→1 node / 1 node and nginx→2 nodes / 1 node."""
    by = {(r.target, r.load): r.wrk for r in results}
    return {
        load: {
            "postgres/sqlite": ratio(by[POSTGRES, load], by[SQLITE, load]),
            "nginx→1 node/1 node": ratio(by[NGINX_ONE, load], by[POSTGRES, load]),
            "nginx→2 nodes/1 node": ratio(by[NGINX_TWO, load], by[POSTGRES, load]),
        }
        for load in dict.fromkeys(r.load for r in results)
    }


def report(
    results: list[Result],
    through_nginx: dict[str, int],
    idle: dict[str, CpuShare],
    args: argparse.Namespace,
) -> None:
    cores = os.cpu_count()
    print(f"\nidle CPU over {IDLE_WINDOW_S:g} s, share of one core: up / registry / model servers")
    for name, cpu in idle.items():
        print(f"  {name:<8} {cpu.up:>4.0%} / {cpu.registry:.0%} / {cpu.model_servers:.0%}")
    for load, figures in ratios(results).items():
        print(
            f"\n{MODEL} / {load}  ({args.connections} connections, median of {args.rounds} runs"
            f" of {args.duration} s)"
        )
        print(
            f"{'target':<14} {'requests/s':>11} {'spread':>7} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'errors':>7}"
        )
        rows = [r for r in results if r.load == load]
        for row in rows:
            w = row.wrk
            print(
                f"{row.target:<14} {w.requests_per_s:>11.1f} {row.spread:>7.0%} {w.p50_ms:>8.2f}"
                f" {w.p99_ms:>8.2f} {w.errors:>7}"
            )
        same = figures["postgres/sqlite"]
        if abs(same - 1) <= NOISE:
            verdict = "equal within noise"
        elif args.rounds == 1:
            verdict = f"beyond ±{NOISE:.0%}; one round shows no noise to judge by: use --rounds 3"
        else:
            seen = max(r.spread for r in rows if r.target in (SQLITE, POSTGRES))
            verdict = (
                f"beyond ±{NOISE:.0%}; the rounds of one of them spread by {seen:.0%}:"
                " rerun on a quieter machine"
            )
        print(f"PostgreSQL / SQLite: {same:.2f}x requests/s ({verdict})")
        print(f"nginx→1 node / 1 node: {figures['nginx→1 node/1 node']:.2f}x (the balancer's cost)")
        print(f"nginx→2 nodes / 1 node: {figures['nginx→2 nodes/1 node']:.2f}x")
    total = sum(through_nginx.values())
    shares = ", ".join(
        f"{name} {count} ({count / total:.0%})" if total else f"{name} {count}"
        for name, count in through_nginx.items()
    )
    print(f"\nrequests answered through nginx→2 nodes, from each node's /metrics: {shares}")
    print("spread: (fastest - slowest round) / median, the machine's noise during the run")
    print(
        f"note: wrk, nginx and all three platforms share this machine's {cores} cores, so two"
        " nodes here cannot double one node's throughput;\nwhat this shows is what the balancer"
        " costs (nginx→1 node) and that both nodes serve."
    )


def write_json(
    path: Path,
    results: list[Result],
    through_nginx: dict[str, int],
    idle: dict[str, CpuShare],
    args: argparse.Namespace,
) -> None:
    config = {
        "loads": args.loads,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "warmup_s": WARMUP_S,
        "cores": os.cpu_count(),
    }
    rows = [{**asdict(r), "wrk": {**asdict(r.wrk), "errors": r.wrk.errors}} for r in results]
    document = {
        "config": config,
        "results": rows,
        "ratios": ratios(results),
        "answered_through_nginx": through_nginx,
        "idle_cpu": {name: asdict(cpu) for name, cpu in idle.items()},
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {path}")


def run(args: argparse.Namespace) -> None:
    ensure_wrk()
    quiet_training_noise()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="modelhost-nodes-bench-") as tmp, ExitStack() as stack:
        scratch = Path(tmp)
        targets = start_all(stack, scratch, args.loads)
        print(f"measuring idle CPU for {IDLE_WINDOW_S:g} s", flush=True)
        idle = idle_shares(targets.ups)
        lua = {}
        for load in args.loads:
            body_file = scratch / f"{load}.json"
            body_file.write_bytes(request_body(iris_rows(LOADS[load])))
            lua[load] = write_lua(body_file)
        results, through_nginx = measure(targets, lua, args)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    report(results, through_nginx, idle, args)
    if args.json:
        write_json(args.json, results, through_nginx, idle, args)
    silent = [name for name, count in through_nginx.items() if count == 0]
    if silent:
        raise BenchmarkError(f"through nginx, {', '.join(silent)} answered no request")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--loads", type=choices(LOADS), default=list(LOADS), help="default: 1row,100row"
    )
    parser.add_argument(
        "--duration", type=positive_int, default=5, help="seconds per run; default: 5"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="runs per target, reported as medians"
    )
    parser.add_argument("--connections", type=positive_int, default=16, help="default: 16")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
