"""Many models on one machine: the memory a served model costs, with fork servers and without.

Registers N distinct registered models (small random forests and logistic regressions on iris,
each its own name with its own version 1), starts `modelhost up` with a fresh home, turns serving
on for all of them at once (modelhost's own environment, env_manager local), scores each once
through the gateway (checking the answer) and reports the whole platform's proportional memory
(PSS: the sum of `Pss:` in /proc/<pid>/smaps_rollup over `up` and every process below it) with
none served and with N served, the marginal PSS per model, the seconds until all answered and
the CPU the platform uses while they sit idle. Then the same with `--no-fork-servers` (one fresh
process per model server, the design before fork servers) for fewer models, and the ratio.

    ./dev python benchmarks/density.py [--models 100] [--fresh-models 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import mlflow.sklearn
import orjson
import sklearn
from mlflow import MlflowClient
from processes import (
    CpuShare,
    fork_servers_available,
    idle_cpu,
    platform_processes,
    platform_pss,
    pss_bytes,
    stop_leftovers,
)
from serving import (
    BenchmarkError,
    iris_rows,
    platform,
    positive_int,
    post_json,
    quiet_training_noise,
    request_body,
    run_benchmark,
)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

API = "/api/2.0/preview/mlflow/endpoints"
MB = 1024 * 1024
# Targets of the issue for small models served with fork servers.
TARGET_PER_MODEL_MB = 40
TARGET_MODELS = 100
TARGET_TOTAL_GB = 5
DISTINCT_MODELS = 10  # logged once each, registered under many names
ANSWER_TIMEOUT_S = 900.0  # 100 model servers starting at once on 2 cores
SETTLE_S = 3.0  # let freshly started processes finish touching their memory
IDLE_WINDOW_S = 10.0
POLL_S = 0.2
ROWS = iris_rows(150).iloc[[0, 60, 120]]  # one of each species
BODY = request_body(ROWS)
REQUIREMENTS = [f"mlflow=={mlflow.__version__}", f"scikit-learn=={sklearn.__version__}"]


@dataclass(frozen=True)
class Density:
    """What one platform cost with none and with `models` models served."""

    design: str
    models: int
    baseline_bytes: int
    served_bytes: int
    all_answered_s: float
    idle_cpu: CpuShare
    processes: int

    @property
    def per_model_bytes(self) -> float:
        return (self.served_bytes - self.baseline_bytes) / self.models

    def projected_bytes(self, models: int) -> float:
        return self.baseline_bytes + self.per_model_bytes * models


# --- models ------------------------------------------------------------------------------------


def train() -> list[tuple[object, list[object]]]:
    """A handful of distinct small models, each with its predictions for ROWS."""
    features, species = load_iris(return_X_y=True, as_frame=True)
    models: list[object] = []
    for i in range(DISTINCT_MODELS):
        if i % 2 == 0:
            models.append(RandomForestClassifier(n_estimators=10, max_depth=5, random_state=i))
        else:
            models.append(LogisticRegression(C=0.1 * (i + 1), max_iter=1000))
    return [(m.fit(features, species), m.predict(ROWS).tolist()) for m in models]  # type: ignore[attr-defined]


def register(count: int, trained: list[tuple[object, list[object]]]) -> dict[str, list[object]]:
    """Log each distinct model once, register `count` names; each name's expected answer."""
    logged = []
    for model, _ in trained:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=ROWS.head(1),
            pip_requirements=REQUIREMENTS,
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
        logged.append(info)
    registry, expected = MlflowClient(), {}
    for i in range(count):
        kind = "forest" if i % 2 == 0 else "linear"
        name = f"density-{kind}-{i:03d}"
        info = logged[i % len(logged)]
        registry.create_registered_model(name)
        registry.create_model_version(name, info.model_uri, model_id=info.model_id)
        expected[name] = trained[i % len(trained)][1]
        if (i + 1) % 25 == 0 or i + 1 == count:
            print(f"    registered {i + 1} of {count}", flush=True)
    return expected


# --- one platform ------------------------------------------------------------------------------


def enable(gateway: str, name: str) -> None:
    body = orjson.dumps({"registered_model_name": name, "env_manager": "local"})
    status, answer = post_json(f"{gateway}{API}/enable", body)
    if status != 200:
        raise BenchmarkError(f"could not enable {name}: {status} {answer[:300]!r}")


def wait_answers(gateway: str, name: str, expected: list[object], deadline: float) -> None:
    """Score `name` once, again until it answers (one request at a time); check the answer."""
    url = f"{gateway}/model/{name}/1/invocations"
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        try:
            last = post_json(url, BODY)
        except OSError as e:  # the gateway itself is away: say so below if it stays away
            last = (0, str(e).encode())
        if last[0] == 200:
            predictions = json.loads(last[1]).get("predictions")
            if predictions != expected:
                raise BenchmarkError(f"{name} predicted {predictions}, expected {expected}")
            return
        time.sleep(POLL_S)
    raise BenchmarkError(f"{name} did not answer in time; last answer: {last[0]} {last[1][:300]!r}")


def measure(design: str, options: list[str], count: int, scratch: Path) -> Density:
    trained = train()
    log = scratch / "up.log"
    print(f"\n{design}: {count} models; modelhost up {' '.join(options)}".rstrip(), flush=True)
    seen: list[int] = []
    with platform(scratch / "home", log, "--env-manager", "local", *options) as (gateway, up):
        try:
            mlflow.set_tracking_uri(gateway)
            mlflow.set_experiment("density")
            expected = register(count, trained)
            time.sleep(SETTLE_S)
            baseline = platform_pss(up.pid)
            print(f"    nothing served: {baseline / MB:.0f} MB", flush=True)
            started = time.monotonic()
            for name in expected:
                enable(gateway, name)
            deadline = started + ANSWER_TIMEOUT_S
            for answered, (name, answer) in enumerate(expected.items(), 1):
                wait_answers(gateway, name, answer, deadline)
                if answered % 25 == 0 or answered == count:
                    print(f"    {answered} of {count} answered", flush=True)
            all_answered = time.monotonic() - started
            time.sleep(SETTLE_S)
            parts = platform_processes(up.pid)
            seen = parts.all
            served = sum(pss_bytes(pid) for pid in parts.all)
            print(f"    {count} served: {served / MB:.0f} MB", flush=True)
            cpu = idle_cpu(up.pid, IDLE_WINDOW_S)
            print(f"    idle CPU: {cpu.total:.0%} of a core", flush=True)
        finally:
            mlflow.set_tracking_uri(None)
    stop_leftovers(seen)
    return Density(design, count, baseline, served, all_answered, cpu, len(parts.all))


# --- the report --------------------------------------------------------------------------------


def report(results: list[Density], forked_available: bool) -> None:
    print("\nwhole platform's PSS (up and every process below it)")
    print(
        f"  {'design':<16} {'models':>6} {'none served':>12} {'all served':>11}"
        f" {'per model':>10} {'all answered':>13} {'idle CPU (up/registry/servers)':>31}"
    )
    for r in results:
        cpu = r.idle_cpu
        shares = f"{cpu.up:.0%} / {cpu.registry:.0%} / {cpu.model_servers:.0%}"
        print(
            f"  {r.design:<16} {r.models:>6} {r.baseline_bytes / MB:>9.0f} MB"
            f" {r.served_bytes / MB:>8.0f} MB {r.per_model_bytes / MB:>7.1f} MB"
            f" {r.all_answered_s:>11.1f} s {shares:>31}"
        )
    by_design = {r.design: r for r in results}
    fresh, forked = by_design.get("fresh processes"), by_design.get("fork servers")
    if fresh:
        projected = fresh.projected_bytes(TARGET_MODELS) / 1024**3
        print(
            f"\n  fresh processes, projected to {TARGET_MODELS} models: {projected:.1f} GB"
            f" (measured on {fresh.models}:\n  {TARGET_MODELS} fresh model servers would not fit"
            " in this machine's memory beside the forked run)"
        )
    if forked and fresh:
        ratio = fresh.per_model_bytes / forked.per_model_bytes
        print(f"  a model costs {ratio:.1f}x less memory with fork servers")
    print("\ntargets (fork servers, small models)")
    if not forked:
        why = "not measured: this modelhost has no --fork-servers" if not forked_available else ""
        print(f"  at most {TARGET_PER_MODEL_MB} MB per model: {why or 'not run'}")
        print(f"  {TARGET_MODELS} models under {TARGET_TOTAL_GB} GB: {why or 'not run'}")
        return
    per_model = forked.per_model_bytes / MB
    total = forked.projected_bytes(TARGET_MODELS) / 1024**3
    total_how = "measured" if forked.models == TARGET_MODELS else f"projected from {forked.models}"
    print(
        f"  at most {TARGET_PER_MODEL_MB} MB per model: {per_model:.1f} MB"
        f"  {'PASS' if per_model <= TARGET_PER_MODEL_MB else 'FAIL'}"
    )
    print(
        f"  {TARGET_MODELS} models under {TARGET_TOTAL_GB} GB: {total:.2f} GB ({total_how})"
        f"  {'PASS' if total < TARGET_TOTAL_GB else 'FAIL'}"
    )
    print(f"  every model answered: PASS ({forked.models} of {forked.models})")


def write_json(path: Path, results: list[Density]) -> None:
    rows = [{**asdict(r), "per_model_bytes": r.per_model_bytes} for r in results]
    path.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    print(f"\nwrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=positive_int, default=100, help="served with fork servers; default: 100"
    )
    parser.add_argument(
        "--fresh-models",
        type=int,
        default=10,
        help="served with --no-fork-servers (a fresh process each, ~250 MB); 0 skips; default: 10",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    quiet_training_noise()
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    forked_available = fork_servers_available()
    runs = []
    if forked_available:
        runs.append(("fork servers", ["--fork-servers"], args.models))
    else:
        print("note: this modelhost's `up` has no --fork-servers: measuring fresh processes only")
    if args.fresh_models > 0:
        fresh_options = ["--no-fork-servers"] if forked_available else []
        runs.append(("fresh processes", fresh_options, args.fresh_models))
    results = []
    for design, options, count in runs:
        with tempfile.TemporaryDirectory(prefix="modelhost-density-") as tmp:
            results.append(measure(design, options, count, Path(tmp)))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    report(results, forked_available)
    if args.json:
        write_json(args.json, results)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
