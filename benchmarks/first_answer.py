"""Time to first answer of a new model version: `modelhost up` against `mlflow models serve`.

Starts `modelhost up` with a fresh home and `--env-manager uv` (every version in an environment
built for it), registers a 50-tree random forest and measures, from `log_model` returning to the
first 200 at `/model/<name>/<version>/invocations`:

- a fresh environment: the first version, whose environment is built (uv's package cache warm);
- a cached environment, new version: a second version of that model, the same requirements;
- a cached environment, new model: another registered model with the same requirements, which
  gets a model server of its own in the cached environment;
- modelhost's own environment (env_manager local) for a new model.

Then `mlflow models serve -m models:/<name>/1` with `--env-manager uv` (a fresh environment
root, then the same root again) and `--env-manager local`, from the command starting to its
first 200. Prints a table and the ratios.

Then, with fork servers on and off (`modelhost up --fork-servers` / `--no-fork-servers`), each
on a platform of its own in modelhost's own environment (env_manager local):

- a new model: a registered model with a version whose serving is turned on, from just before
  the `enable` call to its first 200 (its artifacts not fetched yet: what a user sees);
- recovery: SIGKILL a served model's model server, to the first 200 after.

    ./dev python benchmarks/first_answer.py [--rounds 1] [--repeats 3]
        [--only versions,new-model,recovery]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path

import mlflow
import orjson
import sklearn
import skops
from mlflow import MlflowClient
from mlflow.models.model import ModelInfo
from processes import ended, fork_servers_available, kill_server, model_server_of
from serving import (
    BenchmarkError,
    choices,
    free_port,
    iris_rows,
    log_tail,
    platform,
    positive_int,
    quiet_training_noise,
    request_body,
    server_env,
    stop_group,
)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from modelhost.control.servers import server_log

API = "/api/2.0/preview/mlflow/endpoints"
TIMEOUT_S = 600.0  # a fresh environment installs MLflow and scikit-learn
POLL_S = 0.05
# Pinned, so every version declares the same needs and an environment built for one fits all.
REQUIREMENTS = [
    f"mlflow=={mlflow.__version__}",
    f"scikit-learn=={sklearn.__version__}",
    f"skops=={skops.__version__}",
]
ONE_ROW = request_body(iris_rows(1))
PARTS = {"versions": "new versions", "new-model": "new models", "recovery": "recovery"}
# What the issue asks of fork servers.
TARGET_NEW_MODEL_S = 1.5
TARGET_RECOVERY_S = 1.0
NEW_MODEL = "enabled: from the enable call"
RECOVERY = "model server SIGKILLed: from the kill"


def post(url: str, body: bytes, content_type: str = "application/json") -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # not listening yet
        return 0


def first_200(url: str, started: float, alive: Callable[[], bool], log: Path) -> float:
    """Seconds from `started` to the first 200 of `url` to one row of iris."""
    while time.monotonic() - started < TIMEOUT_S:
        if post(url, ONE_ROW) == 200:
            return time.monotonic() - started
        if not alive():
            raise BenchmarkError(f"the server of {url} exited; log:\n{log_tail(log)}")
        time.sleep(POLL_S)
    raise BenchmarkError(f"{url} did not answer 200 in {TIMEOUT_S:.0f} s; log:\n{log_tail(log)}")


def log_forest(trees: int = 50, name: str | None = None) -> ModelInfo:
    """Log a random forest of `trees` on iris, as a new version of `name` if one is given."""
    features, species = load_iris(return_X_y=True, as_frame=True)
    forest = RandomForestClassifier(n_estimators=trees, random_state=0).fit(features, species)
    with mlflow.start_run():
        return mlflow.sklearn.log_model(
            forest,
            name="model",
            input_example=features.head(2),
            registered_model_name=name,
            pip_requirements=REQUIREMENTS,
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )


def enable(gateway: str, name: str, env_manager: str | None = None) -> None:
    """Create `name` in the registry and turn serving on for it, before any version exists."""
    MlflowClient().create_registered_model(name)
    body = {"registered_model_name": name}
    if env_manager:
        body["env_manager"] = env_manager
    if post(f"{gateway}{API}/enable", orjson.dumps(body)) != 200:
        raise BenchmarkError(f"could not enable {name}")


def measure_modelhost(gateway: str, up: subprocess.Popen[bytes], log: Path) -> dict[str, float]:
    """Seconds to the first answer of each new version on the platform, by case."""
    results: dict[str, float] = {}

    def alive() -> bool:
        return up.poll() is None

    def timed(case: str, name: str) -> str:
        version = str(log_forest(name=name).registered_model_version)
        started = time.monotonic()
        url = f"{gateway}/model/{name}/{version}/invocations"
        results[case] = first_200(url, started, alive, log)
        print(f"  {case}: {results[case]:.2f} s", flush=True)
        return version

    enable(gateway, "forest")  # the platform's default: uv
    timed("modelhost, fresh environment", "forest")
    timed("modelhost, cached environment, new version", "forest")
    enable(gateway, "forest-too")
    timed("modelhost, cached environment, new model", "forest-too")
    enable(gateway, "forest-local", "local")
    timed("modelhost, its own environment (local), new model", "forest-local")
    return results


def measure_mlflow(scratch: Path, gateway: str, env_manager: str, env_root: Path) -> float:
    """`mlflow models serve -m models:/forest/1`: seconds from its start to the first 200."""
    port = free_port()
    log = scratch / f"mlflow-{env_manager}-{port}.log"
    env = {
        **server_env(),
        "MLFLOW_TRACKING_URI": gateway,
        "MLFLOW_ENV_ROOT": str(env_root),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/forest/1"),
        *("--env-manager", env_manager, "-h", "127.0.0.1", "-p", str(port)),
    ]
    with log.open("wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        return first_200(url, started, lambda: process.poll() is None, log)
    finally:
        stop_group(process)


def run(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    quiet_training_noise()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if "versions" in args.only:
        rounds: list[dict[str, float]] = []
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number} of {args.rounds}", flush=True)
            with tempfile.TemporaryDirectory(prefix="modelhost-first-answer-") as tmp:
                rounds.append(one_round(Path(tmp)))
        results = {case: statistics.median(r[case] for r in rounds) for case in rounds[0]}
        report(results, args.rounds)
    if {"new-model", "recovery"} & set(args.only):
        measure_start_and_recovery(args)


def one_round(scratch: Path) -> dict[str, float]:
    log = scratch / "up.log"
    with platform(scratch / "home", log, "--env-manager", "uv") as (gateway, up):
        try:
            mlflow.set_tracking_uri(gateway)
            mlflow.set_experiment("first-answer")
            results = measure_modelhost(gateway, up, log)
            env_root = scratch / "mlflow-envs"
            for case, manager in [
                ("mlflow models serve, uv, fresh environment", "uv"),
                ("mlflow models serve, uv, cached environment", "uv"),
                ("mlflow models serve, local", "local"),
            ]:
                results[case] = measure_mlflow(scratch, gateway, manager, env_root)
                print(f"  {case}: {results[case]:.2f} s", flush=True)
        finally:
            mlflow.set_tracking_uri(None)
    return results


def report(results: dict[str, float], rounds: int) -> None:
    print(f"\nseconds to the first 200 of a new version (median of {rounds} round(s))")
    width = max(len(case) for case in results)
    for case, seconds in results.items():
        print(f"  {case:<{width}}  {seconds:>7.2f}")
    pairs = [
        ("modelhost, fresh environment", "mlflow models serve, uv, fresh environment"),
        (
            "modelhost, cached environment, new version",
            "mlflow models serve, uv, cached environment",
        ),
        (
            "modelhost, cached environment, new model",
            "mlflow models serve, uv, cached environment",
        ),
        ("modelhost, its own environment (local), new model", "mlflow models serve, local"),
    ]
    print()
    for ours, theirs in pairs:
        print(f"  {ours} vs {theirs}: {results[theirs] / results[ours]:.1f}x sooner")


# --- fork servers on and off: a new model, and a model server that died -------------------------


def measure_serving_start(
    design: str, options: list[str], args: argparse.Namespace, scratch: Path
) -> dict[str, list[float]]:
    """On a platform of its own: seconds to the first 200 of new models, and after kills."""
    log, home = scratch / "up.log", scratch / "home"
    measured: dict[str, list[float]] = {NEW_MODEL: [], RECOVERY: []}
    print(f"\n{design}: modelhost up {' '.join(options)}".rstrip(), flush=True)
    with platform(home, log, "--env-manager", "local", *options) as (gateway, up):

        def alive() -> bool:
            return up.poll() is None

        try:
            mlflow.set_tracking_uri(gateway)
            mlflow.set_experiment("first-answer")
            small = log_forest(trees=10)  # registered under each name below
            uri, model_id = small.model_uri, str(small.model_id)
            registry = MlflowClient()
            # The first model also starts what its environment shares (a fork server): not
            # what the next model waits for, so it is said apart.
            names = [f"{design}-warm-up"] + [f"{design}-{i}" for i in range(args.repeats)]
            for number, name in enumerate(names):
                registry.create_registered_model(name)
                registry.create_model_version(name, uri, model_id=model_id)
                started = time.monotonic()
                enable_served(gateway, name)
                seconds = first_200(model_url(gateway, name), started, alive, log)
                if number == 0:
                    print(f"  the first model after up started: {seconds:.2f} s", flush=True)
                elif "new-model" in args.only:
                    measured[NEW_MODEL].append(seconds)
                    print(f"  {NEW_MODEL}: {seconds:.2f} s", flush=True)
            if "recovery" in args.only:
                logs = home.resolve() / "logs"
                for name in names[1:]:  # each server killed once: no restart back-off
                    seconds = recovery(gateway, up.pid, name, server_log(logs, name), alive, log)
                    measured[RECOVERY].append(seconds)
                    print(f"  {RECOVERY}: {seconds:.2f} s", flush=True)
        finally:
            mlflow.set_tracking_uri(None)
    return {case: times for case, times in measured.items() if times}


def model_url(gateway: str, name: str) -> str:
    return f"{gateway}/model/{name}/1/invocations"


def enable_served(gateway: str, name: str) -> None:
    """Turn serving on for `name`, which has a version, in modelhost's own environment."""
    body = {"registered_model_name": name, "env_manager": "local"}
    if post(f"{gateway}{API}/enable", orjson.dumps(body)) != 200:
        raise BenchmarkError(f"could not enable {name}")


def recovery(
    gateway: str, up: int, name: str, model_log: Path, alive: Callable[[], bool], log: Path
) -> float:
    """SIGKILL the model server of `name`: seconds from the kill to its next 200."""
    server = model_server_of(up, model_log)
    if server is None:
        raise BenchmarkError(f"found no model server of {name} writing {model_log}")
    started = time.monotonic()
    kill_server(server)
    # Ask only once it has died, so that no answer of the killed server is counted.
    while not ended(server):
        if time.monotonic() - started > TIMEOUT_S:
            raise BenchmarkError(f"the model server {server} of {name} outlived SIGKILL")
        time.sleep(0.001)
    return first_200(model_url(gateway, name), started, alive, log)


def measure_start_and_recovery(args: argparse.Namespace) -> None:
    designs = [("fresh", ["--no-fork-servers"])]
    if fork_servers_available():
        designs.insert(0, ("forked", ["--fork-servers"]))
    else:
        designs = [("fresh", [])]
        print("note: this modelhost's `up` has no --fork-servers: measuring fresh processes only")
    results: dict[str, dict[str, list[float]]] = {}
    for design, options in designs:
        with tempfile.TemporaryDirectory(prefix="modelhost-first-answer-") as tmp:
            results[design] = measure_serving_start(design, options, args, Path(tmp))
    report_start_and_recovery(results, args.repeats)


def report_start_and_recovery(results: dict[str, dict[str, list[float]]], repeats: int) -> None:
    forked, fresh = results.get("forked", {}), results["fresh"]
    print(f"\nseconds to the first 200, modelhost's own environment (median of {repeats})")
    print(f"  {'':<38} {'fork servers':>14} {'fresh processes':>17} {'fresh/forked':>14}")
    for case in fresh:
        theirs = statistics.median(fresh[case])
        if case in forked:
            ours = statistics.median(forked[case])
            print(f"  {case:<38} {ours:>14.2f} {theirs:>17.2f} {theirs / ours:>13.1f}x")
        else:
            print(f"  {case:<38} {'-':>14} {theirs:>17.2f} {'-':>14}")
    print("\ntargets (fork servers)")
    for case, target in ((NEW_MODEL, TARGET_NEW_MODEL_S), (RECOVERY, TARGET_RECOVERY_S)):
        if case not in fresh:
            continue
        if case not in forked:
            print(f"  {case} within {target} s: not measured (no fork servers)")
            continue
        worst = max(forked[case])
        verdict = "PASS" if worst <= target else "FAIL"
        print(f"  {case} within {target} s: slowest {worst:.2f} s  {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rounds", type=positive_int, default=1, help="rounds, each with a fresh home"
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="new models and kills per design, reported as medians; default: 3",
    )
    parser.add_argument(
        "--only",
        type=choices(PARTS),
        default=list(PARTS),
        help="parts to run: versions (the slow environment builds), new-model, recovery;"
        " default: all",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
