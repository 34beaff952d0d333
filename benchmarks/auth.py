"""What auth costs on the scoring path: the same model through `modelhost up` open and with --auth.

Starts two platforms with fresh homes, one open (loopback) and one with `--auth`, registers the
same 50-tree random forest in each and turns serving on, then drives
`/model/<name>/1/invocations` with the same wrk load, in turns; the auth platform is called by a
user with READ on a name prefix (the path every reader takes), with a Bearer token. Prints both
throughputs and the share the auth platform keeps (the target: at least 90%).

    ./dev python benchmarks/auth.py [--duration 5] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import orjson
from gateway import API, MODEL, register, wait
from serving import (
    WARMUP_S,
    BenchmarkError,
    WrkResult,
    ensure_wrk,
    iris_rows,
    median_run,
    platform,
    positive_int,
    request_body,
    run_wrk,
)


def call(url: str, token: str | None, body: dict | None = None) -> dict:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def serve_model(url: str, token: str | None) -> None:
    """Register the forest as the admin (MLflow's client sends the token) and serve it."""
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    try:
        register(url)
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    call(f"{url}{API}/enable", token, {"registered_model_name": MODEL})

    def ready() -> bool:
        shown = call(f"{url}{API}/list-versions?registered_model_name={MODEL}", token)
        return [v["state"] for v in shown["endpoint_versions"]] == ["VERSION_STATE_READY"]

    wait(ready, f"version 1 ready on {url}")


def reader_token(url: str, admin: str) -> str:
    """A user with READ on a prefix of the model's name: what every reader's request checks."""
    call(f"{url}/api/2.0/modelhost/users/create", admin, {"name": "bench-reader"})
    prefix = MODEL.split("-")[0] + "-*"
    grant = {"target": prefix, "user": "bench-reader", "level": "READ"}
    call(f"{url}/api/2.0/modelhost/permissions/grant", admin, grant)
    return call(f"{url}/api/2.0/modelhost/tokens/create", admin, {"user": "bench-reader"})["token"]


def check_refused(url: str) -> None:
    """The auth platform must refuse a request with no token, or the comparison means nothing."""
    try:
        call(f"{url}/model/{MODEL}/1/invocations", None, {"dataframe_split": {}})
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return
    raise BenchmarkError(f"{url} did not answer 401 to a request with no token")


def write_lua(body_file: Path, token: str | None) -> Path:
    script = body_file.with_name(f"{'auth' if token else 'open'}.lua")
    lines = [
        f"local f = assert(io.open({json.dumps(str(body_file))}, 'rb'))",
        "wrk.method = 'POST'",
        "wrk.body = f:read('*a')",
        "f:close()",
        "wrk.headers['Content-Type'] = 'application/json'",
    ]
    if token:
        lines.append(f"wrk.headers['Authorization'] = 'Bearer {token}'")
    script.write_text("\n".join(lines) + "\n")
    return script


def run(args: argparse.Namespace) -> None:
    ensure_wrk()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    admin = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="modelhost-auth-bench-") as scratch, ExitStack() as up:
        tmp = Path(scratch)
        signed_in = {"MODELHOST_ADMIN_TOKEN": admin}
        urls = {
            "open": up.enter_context(platform(tmp / "open", tmp / "open.log"))[0],
            "auth": up.enter_context(
                platform(tmp / "auth", tmp / "auth.log", "--auth", env=signed_in)
            )[0],
        }
        serve_model(urls["open"], None)
        serve_model(urls["auth"], admin)
        check_refused(urls["auth"])
        body_file = tmp / "one-row.json"
        body_file.write_bytes(request_body(iris_rows(1)))
        scripts = {"open": write_lua(body_file, None),
                   "auth": write_lua(body_file, reader_token(urls["auth"], admin))}  # fmt: skip
        runs: dict[str, list[WrkResult]] = {name: [] for name in urls}
        for round_number in range(args.rounds):
            for name, url in urls.items():
                target = f"{url}/model/{MODEL}/1/invocations"
                if round_number == 0:
                    run_wrk(target, scripts[name], args.connections, WARMUP_S)
                measured = run_wrk(target, scripts[name], args.connections, args.duration)
                if measured.errors:
                    raise BenchmarkError(f"{name}: {measured.errors} failed requests")
                runs[name].append(measured)
                print(
                    f"  round {round_number + 1} {name:<5} {measured.requests_per_s:>9.1f}"
                    f" req/s  p99 {measured.p99_ms:.1f} ms",
                    flush=True,
                )
    medians = {name: median_run(measured) for name, measured in runs.items()}
    print(f"\n1-row requests, {args.connections} connections, median of {args.rounds} runs")
    for name, result in medians.items():
        print(
            f"{name:<5} {result.requests_per_s:>9.1f} req/s  p50 {result.p50_ms:.2f} ms"
            f"  p99 {result.p99_ms:.2f} ms"
        )
    kept = medians["auth"].requests_per_s / medians["open"].requests_per_s
    print(f"with auth, modelhost keeps {kept:.0%} of the open throughput (target: 90% or more)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=positive_int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=positive_int, default=3, help="runs per platform")
    parser.add_argument("--connections", type=positive_int, default=16)
    try:
        run(parser.parse_args())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
