"""Faults under load: a hung or killed model server, a lost registry, a restarted `up`.

One platform (`up --timeout 5` in front of a registry the test runs itself, so it can kill it
and bring it back) serves two models, A and B. Faults strike A's model server or the platform
around it, while steady load runs through the gateway at both and every request is counted.
`pytest -s` prints the counts per phase.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from support import (
    ONE_ROW,
    Load,
    Platform,
    Registry,
    eventually,
    log_iris,
    model_servers,
    signal_server,
)

A, B = "model-a", "model-b"  # A is the one faults strike; B is left alone
API = "/api/2.0/preview/mlflow/endpoints"
TIMEOUT_S = 5.0  # `up --timeout`: no scoring request may take longer
# The client's side of every window below: its own request on a loaded loopback, its polling
# interval, and thread scheduling on a 2-core machine shared with other test runs.
SLACK_S = 1.0
DEPLOY_S = 5.0  # issue 10, item 2: a new version deploys and its routes move within 5 s
RECOVERY_S = 5.0  # issue 10, item 5: serving back within 5 s of a fault ending
RESTART_S = 10.0  # issue 10, item 5: every served model answers within 10 s of `up` being up
STOP_S = 8.0  # how long A's model server stays stopped (SIGSTOP) under load
REGISTRY_DOWN_S = 3.0  # several of the controller's registry reads fail meanwhile
# How long anything is waited for before the test gives up on it: a bound, not a measure.
GIVE_UP_S = 60.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def platform(tmp_path_factory, registry, iris):
    """`up` with A and B served, version 1 of each ready; B's alias `champion` on it."""
    home = tmp_path_factory.mktemp("faults") / "home"
    options = ("--timeout", str(TIMEOUT_S), "--registry-uri", registry.url)
    with Platform(home, *options) as running:
        mlflow.set_tracking_uri(running.url)
        try:
            mlflow.set_experiment("faults")
            for name in (A, B):
                assert log_iris(iris, name) == "1"
            MlflowClient().set_registered_model_alias(B, "champion", "1")
            for name in (A, B):
                enabled = httpx.post(
                    f"{running.url}{API}/enable", json={"registered_model_name": name}
                )
                assert enabled.status_code == 200, enabled.text
            _both_served(running)
            yield running
        finally:
            mlflow.set_tracking_uri(None)


def test_a_hung_model_server_delays_no_other_model(platform, iris):
    """Item 2: with A's server stopped, B's new version deploys and B's alias moves to it."""
    _both_served(platform)
    hung = model_servers(platform, A)
    assert hung, f"no model server of {A} found"
    load = Load({A: _url(platform, A, "1"), B: _url(platform, B, "champion")})
    with load:
        _settle(load)
        load.phase = "A stopped"
        stopped_at = time.monotonic()
        for pid in hung:
            signal_server(pid, signal.SIGSTOP)
        try:
            version = log_iris(iris, B)  # returns once the version is READY in the registry
            registered_at = time.monotonic()
            MlflowClient().set_registered_model_alias(B, "champion", version)
            moved_at = time.monotonic()
            served_at = _first(lambda: _answers(platform, B, version))
            routed_at = _first(lambda: _answers(platform, B, "champion", version))
            # Long enough that A's requests meet --timeout, whatever came first.
            time.sleep(max(0.0, stopped_at + TIMEOUT_S + 3 - time.monotonic()))
        finally:
            for pid in hung:
                signal_server(pid, signal.SIGCONT)
        load.phase = "A resumed"
        time.sleep(1)
    loading_s = _loading_s(platform, B, version)
    print(f"\n{load.summary()}")
    print(
        f"B's version {version}: first 200 {_since(served_at, registered_at)} after it was "
        f"READY in the registry; alias moved {_since(routed_at, moved_at)} after it was set; "
        f"the model server took {loading_s:.2f} s to load it"
    )

    # "Within the usual 5 seconds", not counting the load itself: its time is the model's and
    # the machine's, which the platform cannot shorten; what is left is the platform's own.
    allowed_s = DEPLOY_S + loading_s + SLACK_S
    problems = [
        *_late(f"B's version {version} answering", served_at, registered_at, allowed_s),
        *_late(f"B's alias moving to version {version}", routed_at, moved_at, allowed_s),
        *_only_unavailable(load, A, "A stopped"),
        *_none_failed(load, B, [None]),
    ]
    assert load.of(A, "A stopped"), "no request reached A while its server was stopped"
    assert not problems, "\n".join(problems)


def test_faults_under_steady_load_are_survived(platform, registry):
    """Item 5: SIGKILL, SIGSTOP, the registry lost and back, `up` restarted; all counted."""
    _both_served(platform)
    problems: list[str] = []
    load = Load({A: _url(platform, A, "1"), B: _url(platform, B, "1")})
    with load:
        _settle(load)

        load.phase = "a: A's server killed"
        killed = model_servers(platform, A)
        assert killed, f"no model server of {A} found"
        for pid in killed:
            signal_server(pid, signal.SIGKILL)
        back = _recovery(load, ended_at=time.monotonic())
        problems += back.problems(load.phase)

        load.phase = "b: A's server stopped"
        stopped = model_servers(platform, A)
        assert stopped, f"no model server of {A} found"
        for pid in stopped:
            signal_server(pid, signal.SIGSTOP)
        try:
            time.sleep(STOP_S)
        finally:
            for pid in stopped:
                signal_server(pid, signal.SIGCONT)
        back = _recovery(load, ended_at=time.monotonic())
        problems += back.problems(load.phase)

        load.phase = "c: registry lost"
        registry.kill()
        time.sleep(REGISTRY_DOWN_S)
        registry.start()  # returns once it answers again, on its port and database
        back = _recovery(load, ended_at=time.monotonic())
        problems += back.problems(load.phase)
        time.sleep(1)  # the registry back, under load for a moment more
    print(f"\n{load.summary()}")
    phases = list(dict.fromkeys(o.phase for o in load.outcomes))
    problems += _none_failed(load, B, phases)
    for phase in phases:
        problems += _only_unavailable(load, A, phase)

    # d: Ctrl-C and `up` again on the same home and registry; then Ctrl-C for good.
    platform.restart()
    if platform.up_at is None:
        problems.append("d: the restarted `up` never printed that it is up")
    else:
        for name in (A, B):
            answered_at = _first(lambda name=name: _answers(platform, name, "1"))
            restarted = Recovery(name, platform.up_at, answered_at)
            problems += restarted.problems("d: `up` restarted", RESTART_S)
        print(_events_since_restart(platform))
    try:
        platform.stop(group=True)  # checks that nothing it started is left
    except AssertionError as e:
        problems.append(f"d: {e}")
    registry.stop()  # and the test's own registry, the last process of this module
    assert not problems, "\n".join(problems)


# --- what the tests count and wait for


@dataclass
class Recovery:
    """When a model served again after a fault ended. The whole window counts, a new model
    server's start included: it forks from its environment's fork server, which has imported
    everything already, so its start is a fraction of a second, not the seconds of a fresh
    Python process."""

    name: str
    ended_at: float
    back_at: float | None  # the end of its first 200 among requests sent after `ended_at`

    def problems(self, phase: str, allowed_s: float = RECOVERY_S) -> list[str]:
        if self.back_at is None:
            return [f"{phase}: {self.name} did not answer 200 again within {GIVE_UP_S:g} s"]
        print(f"{phase}: {self.name} back {self.back_at - self.ended_at:.2f} s after it ended")
        what = f"{phase}: {self.name} serving again"
        return _late(what, self.back_at, self.ended_at, allowed_s + SLACK_S)


def _recovery(load: Load, ended_at: float) -> Recovery:
    """Wait (bounded) for A's first 200 among requests sent after the fault ended."""
    _first(lambda: load.first_success(A, since=ended_at) is not None)
    return Recovery(A, ended_at, load.first_success(A, since=ended_at))


def _only_unavailable(load: Load, target: str, phase: str) -> list[str]:
    """A fault's requests may fail only as 503 or 504 with Retry-After, and within --timeout."""
    outcomes = load.of(target, phase)
    refused = [
        o for o in outcomes if o.status != 200 and (o.status not in (503, 504) or not o.retry_after)
    ]
    slow = [o for o in outcomes if o.duration_s > TIMEOUT_S + SLACK_S]
    problems = []
    if refused:
        o = refused[0]
        problems.append(
            f"{phase}: {len(refused)} of {len(outcomes)} requests to {target} failed other than "
            f"503/504 with Retry-After, e.g. {o.status or 'no answer'} "
            f"{'with' if o.retry_after else 'without'} Retry-After: {o.error}"
        )
    if slow:
        problems.append(
            f"{phase}: {len(slow)} of {len(outcomes)} requests to {target} took longer than "
            f"--timeout {TIMEOUT_S:g} s (+{SLACK_S:g} s), the longest "
            f"{max(o.duration_s for o in slow):.1f} s"
        )
    return problems


def _none_failed(load: Load, target: str, phases: list[str | None]) -> list[str]:
    """The model left alone: every request answered 200, none waiting past --timeout."""
    problems = []
    for phase in phases:
        outcomes = load.of(target, phase)
        failed = [o for o in outcomes if o.status != 200]
        slow = [o for o in outcomes if o.duration_s > TIMEOUT_S + SLACK_S]
        where = f"{phase}: " if phase else ""
        if failed:
            o = failed[0]
            problems.append(
                f"{where}{len(failed)} of {len(outcomes)} requests to {target} failed, "
                f"e.g. {o.status or 'no answer'}: {o.error}"
            )
        if slow:
            problems.append(
                f"{where}{len(slow)} of {len(outcomes)} requests to {target} took longer than "
                f"--timeout, the longest {max(o.duration_s for o in slow):.1f} s"
            )
    return problems


def _late(what: str, at: float | None, since: float, allowed_s: float) -> list[str]:
    if at is None:
        return [f"{what}: not within {GIVE_UP_S:g} s"]
    if at - since > allowed_s:
        return [f"{what}: {at - since:.1f} s, more than the {allowed_s:.1f} s allowed"]
    return []


def _since(at: float | None, since: float) -> str:
    return "never" if at is None else f"{at - since:.2f} s"


def _url(platform: Platform, name: str, ref: str) -> str:
    return f"{platform.url}/model/{name}/{ref}/invocations"


def _answers(platform: Platform, name: str, ref: str, version: str | None = None) -> bool:
    """Whether `ref` of `name` answers 200 now, from `version` when one is given."""
    try:
        answer = httpx.post(_url(platform, name, ref), json=ONE_ROW, timeout=TIMEOUT_S + 15)
    except httpx.TransportError:
        return False
    routed = answer.headers.get("x-modelhost-version")
    return answer.status_code == 200 and version in (None, routed)


def _first(check) -> float | None:
    """When `check()` first held (time.monotonic()), polling; None after GIVE_UP_S."""
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    return None


def _both_served(platform: Platform) -> None:
    for name in (A, B):
        eventually(lambda name=name: _must_answer(platform, name), timeout_s=120)


def _must_answer(platform: Platform, name: str) -> None:
    assert _answers(platform, name, "1"), f"{name} does not answer yet"


def _settle(load: Load) -> None:
    """Wait until every target has answered a few requests of the current phase."""

    def answering() -> None:
        for target in load.targets:
            ok = [o for o in load.of(target, load.phase) if o.status == 200]
            assert len(ok) >= 3, f"{target} is not answering steadily yet"

    eventually(answering, timeout_s=GIVE_UP_S)


_LOG_LINE = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*"  # as modelhost's processes log


def _logged_at(platform: Platform, name: str, version: str, said: str) -> list[float]:
    """When the model's servers logged lines about `version` holding `said` (monotonic clock)."""
    logs = httpx.get(
        f"{platform.url}{API}/logs",
        params={"registered_model_name": name, "endpoint_version_name": version},
        timeout=30,
    ).json()["logs"]
    monotonic_offset = time.time() - time.monotonic()
    return [
        datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - monotonic_offset
        for found in re.finditer(_LOG_LINE + re.escape(said), logs, re.MULTILINE)
    ]


def _loading_s(platform: Platform, name: str, version: str) -> float:
    """How long the model server took to load `version`, from the version's own log lines."""
    loading = _logged_at(platform, name, version, f"Loading version {version} ")
    ready = _logged_at(platform, name, version, f"Version {version} is ready")
    assert loading and ready, f"no log lines of {name} version {version} loading and ready"
    return ready[-1] - loading[-1]


def _events_since_restart(platform: Platform) -> str:
    """What the platform says it did for each model since `up` restarted, to diagnose by."""
    assert platform.up_at is not None
    up_ms = (time.time() - (time.monotonic() - platform.up_at)) * 1000
    lines = []
    for name in (A, B):
        shown = httpx.get(
            f"{platform.url}{API}/events", params={"registered_model_name": name}, timeout=30
        )
        events = shown.json().get("events", []) if shown.status_code == 200 else []
        for event in reversed(events):
            if event.get("timestamp", 0) >= up_ms - 1000:
                at = (event["timestamp"] - up_ms) / 1000
                lines.append(f"d: {name} {at:+6.2f} s {event.get('message')}")
    return "\n".join(lines)
