"""Planning, case by case: desired and actual in, actions and routes out. No process, no network."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from modelhost.control.environments import Environment
from modelhost.control.placement import Preparation, PreparationState
from modelhost.control.plan import (
    Actual,
    DesiredModel,
    Forget,
    Hold,
    Prepare,
    Record,
    Release,
    StartServer,
    StopServer,
    plan,
)
from modelhost.control.routes import (
    EndpointState,
    RouteTable,
    ServerAddress,
    VersionState,
)
from modelhost.control.settings import Runtime, ServingSettings
from modelhost.control.supervisor import Health, Held, HeldState, ServerSpec, ServerView

HERE = Environment("abc123", Path(sys.executable), built=False)  # modelhost's own interpreter
RUNTIME = Runtime()  # the platform's defaults
BUILT = Environment("def456", Path("/envs/def456/bin/python"), False, Path("/envs/def456"))


def desired(*models: DesiredModel) -> dict[str, DesiredModel]:
    return {m.name: m for m in models}


def model(name="m", manager="auto", stages=None, aliases=None, **versions) -> DesiredModel:
    """`versions`: v1="None" for version 1 with no stage."""
    staged = {k.removeprefix("v"): s for k, s in versions.items()}
    staged.update(stages or {})
    return DesiredModel(name, manager, staged, aliases or {}, {v: f"src {v}" for v in staged})


def prepared(version: str, name="m", manager="auto", environment=HERE) -> Preparation:
    return Preparation(
        name, version, manager, PreparationState.PREPARED, "Prepared.",
        Path(f"/home/models/{name}/{version}"), environment,
    )  # fmt: skip


def server(
    name="m",
    env="current",
    health=Health.UP,
    number=1,
    message="",
    runtime=None,
    **held: HeldState,
) -> ServerView:
    versions = {k.removeprefix("v"): Held(state, state.value.lower()) for k, state in held.items()}
    runtime = runtime or RUNTIME
    address = ServerAddress(number, f"/sockets/{number}.sock")
    return ServerView((name, env, runtime), health, address, versions, message)


def actual(*parts: Preparation | ServerView) -> Actual:
    preparations = {p.key: p for p in parts if isinstance(p, Preparation)}
    servers = {s.key: s for s in parts if isinstance(s, ServerView)}
    return Actual(preparations, servers)


def events(actions) -> list[str]:
    return [a.message for a in actions if isinstance(a, Record)]


def of(kind, actions) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_a_new_model_is_prepared_version_by_version():
    planned = plan(desired(model(v1="None", v2="Production")), Actual(), RouteTable(), now=0)
    assert of(Prepare, planned.actions) == [
        Prepare("m", "1", "auto", "src 1"),
        Prepare("m", "2", "auto", "src 2"),
    ]
    assert events(planned.actions) == [
        "Preparing its versions to serve (env_manager auto).",
        "Deploying version 1.",
        "Deploying version 2.",
    ]
    routes = planned.routes.models["m"]
    assert routes.state is EndpointState.PENDING
    assert {v: r.state for v, r in routes.versions.items()} == {
        "1": VersionState.PENDING,
        "2": VersionState.PENDING,
    }
    assert routes.resolve("production") is None  # nothing ready to name


def test_a_prepared_version_gets_a_server_then_is_held_then_routed():
    want = desired(model(v1="None"))
    first = plan(want, actual(prepared("1")), RouteTable(), now=0)
    assert of(StartServer, first.actions)[0].spec.key == ("m", "current", RUNTIME)
    assert first.routes.models["m"].versions["1"].message == "Starting its model server."

    # The server answers, holding nothing yet: it is told to hold version 1.
    up = plan(want, actual(prepared("1"), server()), first.routes, now=1)
    assert of(Hold, up.actions) == [
        Hold(("m", "current", RUNTIME), "1", "models:/m/1", Path("/home/models/m/1"))
    ]
    assert up.routes.models["m"].versions["1"].state is VersionState.PENDING

    loading = plan(want, actual(prepared("1"), server(v1=HeldState.LOADING)), up.routes, now=2)
    assert not of(Hold, loading.actions)  # told once
    assert loading.routes.models["m"].versions["1"].state is VersionState.PENDING

    ready = plan(want, actual(prepared("1"), server(v1=HeldState.READY)), loading.routes, now=3)
    route = ready.routes.models["m"].versions["1"]
    assert route.state is VersionState.READY
    assert route.server == ServerAddress(1, "/sockets/1.sock")
    assert events(ready.actions) == ["Version 1 is ready."]
    assert ready.routes.models["m"].state is EndpointState.READY
    # Said once: the next plan records nothing new.
    again = plan(want, actual(prepared("1"), server(v1=HeldState.READY)), ready.routes, now=4)
    assert again.actions == ()


def test_an_archived_version_is_released_and_unrouted():
    both = actual(prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.READY))
    before = plan(desired(model(v1="None", v2="None")), both, RouteTable(), now=0).routes
    after = plan(desired(model(v2="None")), both, before, now=1)
    assert Release(("m", "current", RUNTIME), "1") in after.actions
    assert Forget(("m", "1", "auto")) in after.actions
    assert "Version 1 is no longer served." in events(after.actions)
    assert set(after.routes.models["m"].versions) == {"2"}
    assert not of(StopServer, after.actions)  # version 2 still needs it


def test_a_moved_stage_keeps_its_version_until_the_new_one_is_ready():
    was = model(v1="Production", v2="None")
    moved = model(v1="None", v2="Production")
    ready_1 = actual(prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.LOADING))
    before = plan(desired(was), ready_1, RouteTable(), now=0).routes
    assert before.models["m"].resolve("Production") == "1"

    loading = plan(desired(moved), ready_1, before, now=1).routes
    assert loading.models["m"].resolve("production") == "1"  # the new one is not ready yet

    both_ready = actual(
        prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.READY)
    )
    moved_now = plan(desired(moved), both_ready, loading, now=2).routes
    assert moved_now.models["m"].resolve("Production") == "2"


def test_a_moved_alias_keeps_its_version_until_the_new_one_is_ready():
    was = model(v1="None", v2="None", aliases={"champion": "1"})
    moved = model(v1="None", v2="None", aliases={"champion": "2"})
    loading = actual(prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.LOADING))
    before = plan(desired(was), loading, RouteTable(), now=0).routes
    assert before.models["m"].resolve("champion") == "1"
    assert (
        plan(desired(moved), loading, before, now=1).routes.models["m"].resolve("champion") == "1"
    )
    ready = actual(prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.READY))
    assert plan(desired(moved), ready, before, now=2).routes.models["m"].resolve("champion") == "2"
    # An alias whose old version is gone and new one not ready names nothing (404, not stale).
    gone = model(v2="None", aliases={"champion": "2"})
    assert (
        plan(desired(gone), loading, before, now=3).routes.models["m"].resolve("champion") is None
    )


def test_a_failed_preparation_fails_its_version_alone_and_is_retried_after_its_back_off():
    failed = Preparation(
        "m", "2", "auto", PreparationState.FAILED, "numpy==0.0.1 cannot be installed",
        failures=1, retry_at=600,
    )  # fmt: skip
    want = desired(model(v1="None", v2="None"))
    world = actual(prepared("1"), failed, server(v1=HeldState.READY))
    planned = plan(want, world, RouteTable(), now=10)
    versions = planned.routes.models["m"].versions
    assert versions["1"].state is VersionState.READY
    assert versions["2"].state is VersionState.FAILED
    assert "cannot be installed" in versions["2"].message
    assert "Version 2 failed: numpy==0.0.1 cannot be installed" in events(planned.actions)
    assert not of(Prepare, planned.actions)  # not before its back-off
    assert planned.routes.models["m"].state is EndpointState.READY

    later = plan(want, world, planned.routes, now=600)
    assert of(Prepare, later.actions) == [Prepare("m", "2", "auto", "src 2", failures=1)]
    assert events(later.actions) == []  # a retry, not a new deployment


def test_a_version_that_fails_to_load_is_not_held_again_on_the_same_server():
    world = actual(prepared("1"), server(v1=HeldState.FAILED))
    planned = plan(desired(model(v1="None")), world, RouteTable(), now=0)
    assert planned.routes.models["m"].versions["1"].state is VersionState.FAILED
    assert not of(Hold, planned.actions)
    assert planned.routes.models["m"].state is EndpointState.FAILED  # no version answers


def test_a_new_env_manager_prepares_again_and_serves_from_the_old_until_the_new_is_ready():
    want = desired(model(manager="uv", v1="None"))
    before = plan(
        desired(model(v1="None")), actual(prepared("1"), server(v1=HeldState.READY)),
        RouteTable(), now=0,
    ).routes  # fmt: skip
    old = prepared("1")
    new_preparing = Preparation("m", "1", "uv", message="Building the Python environment.")

    started = plan(want, actual(old, server(v1=HeldState.READY)), before, now=1)
    assert Prepare("m", "1", "uv", "src 1") in started.actions
    assert "env_manager is now uv: preparing the versions again." in events(started.actions)
    assert "Deploying version 1." not in events(started.actions)
    assert started.routes.models["m"].versions["1"].state is VersionState.READY

    building = plan(want, actual(old, new_preparing, server(v1=HeldState.READY)), before, now=2)
    route = building.routes.models["m"].versions["1"]
    assert route.state is VersionState.READY and route.server is not None
    assert route.message.startswith("Ready in its previous environment")
    assert not of(StopServer, building.actions) and not of(Release, building.actions)

    # Prepared in the new environment: a second server starts for it, the old keeps serving.
    new = prepared("1", manager="uv", environment=BUILT)
    both = plan(want, actual(old, new, server(v1=HeldState.READY)), building.routes, now=3)
    assert [a.spec.key for a in of(StartServer, both.actions)] == [("m", "def456", RUNTIME)]
    assert both.routes.models["m"].versions["1"].server == ServerAddress(1, "/sockets/1.sock")

    new_server = server(env="def456", number=2, v1=HeldState.READY)
    moved = plan(want, actual(old, new, server(v1=HeldState.READY), new_server), both.routes, 4)
    assert moved.routes.models["m"].versions["1"].server == ServerAddress(2, "/sockets/2.sock")
    assert Forget(("m", "1", "auto")) in moved.actions
    # The old preparation is forgotten now; the plan after that stops its server.
    done = plan(want, actual(new, server(v1=HeldState.READY), new_server), moved.routes, 5)
    assert StopServer(("m", "current", RUNTIME)) in done.actions


def test_a_restarting_server_unroutes_its_versions_until_it_holds_them_again():
    want = desired(model(v1="None"))
    before = plan(
        want, actual(prepared("1"), server(v1=HeldState.READY)), RouteTable(), now=0
    ).routes
    exited = server(health=Health.RESTARTING, message="Its model server exited with code -9.")
    down = plan(want, actual(prepared("1"), exited), before, now=1)
    route = down.routes.models["m"].versions["1"]
    assert route.state is VersionState.PENDING and route.server is None
    assert "exited with code -9" in route.message
    assert not of(StartServer, down.actions)  # the supervisor restarts it by itself
    assert not of(Hold, down.actions)

    restarted = server(number=7)  # a new process: a new address, holding nothing
    back = plan(want, actual(prepared("1"), restarted), down.routes, now=2)
    assert of(Hold, back.actions) == [
        Hold(("m", "current", RUNTIME), "1", "models:/m/1", Path("/home/models/m/1"))
    ]
    ready = plan(want, actual(prepared("1"), server(number=7, v1=HeldState.READY)), back.routes, 3)
    assert ready.routes.models["m"].versions["1"].server == ServerAddress(7, "/sockets/7.sock")


def test_a_hung_server_delays_nothing_of_another_model():
    want = desired(model("a", v1="None"), model("b", v1="None", v2="None"))
    hung = server("a", health=Health.UNRESPONSIVE, message="It did not answer for 3 s.")
    world = actual(
        prepared("1", "a"), hung, prepared("1", "b"), prepared("2", "b"),
        server("b", number=2, v1=HeldState.READY),
    )  # fmt: skip
    planned = plan(want, world, RouteTable(), now=0)
    assert planned.routes.models["a"].versions["1"].state is VersionState.PENDING
    assert planned.routes.models["b"].versions["1"].state is VersionState.READY
    assert of(Hold, planned.actions) == [
        Hold(("b", "current", RUNTIME), "2", "models:/b/2", Path("/home/models/b/2"))
    ]


def test_serving_turned_off_stops_everything_of_the_model():
    world = actual(prepared("1"), Preparation("m", "2", "auto"), server(v1=HeldState.READY))
    before = plan(desired(model(v1="None", v2="None")), world, RouteTable(), now=0).routes
    planned = plan({}, world, before, now=1)
    assert set(planned.actions) >= {
        Forget(("m", "1", "auto")),
        Forget(("m", "2", "auto")),
        StopServer(("m", "current", RUNTIME)),
        Record("m", "Serving disabled: the model servers stopped."),
    }
    assert planned.routes.models == {}


def test_a_model_not_read_from_the_registry_yet_waits():
    planned = plan(desired(DesiredModel("m", "auto")), Actual(), RouteTable(), now=0)
    assert of(Prepare, planned.actions) == []
    assert planned.routes.models["m"].state is EndpointState.PENDING
    assert "registry" in planned.routes.models["m"].message


def test_published_routes_cannot_be_changed():
    planned = plan(desired(model(v1="None")), actual(prepared("1")), RouteTable(), now=0)
    routes = planned.routes.models["m"]
    for attempt in (
        lambda: routes.versions.__setitem__("9", None),
        lambda: setattr(routes, "state", EndpointState.READY),
        lambda: planned.routes.models.__setitem__("x", routes),
    ):
        try:
            attempt()
        except (TypeError, AttributeError):
            continue
        raise AssertionError("a published table changed")


NEW = Runtime(workers=2, max_batch_size=64, max_batch_delay_ms=3, timeout_s=20)


def test_new_settings_start_a_server_beside_the_old_and_move_routes_once_it_is_ready():
    versions = (prepared("1"), prepared("2"))
    old = server(v1=HeldState.READY, v2=HeldState.READY)
    before = plan(
        desired(model(v1="None", v2="Production")), actual(*versions, old), RouteTable(), now=0
    ).routes
    on_old = ServerAddress(1, "/sockets/1.sock")
    want = desired(dataclasses.replace(model(v1="None", v2="Production"), runtime=NEW))

    started = plan(want, actual(*versions, old), before, now=1)
    assert of(StartServer, started.actions) == [StartServer(ServerSpec("m", HERE, NEW))]
    assert events(started.actions) == [
        "Starting a model server with the new settings "
        "(workers 2, max_batch_size 64, max_batch_delay_ms 3, timeout_s 20)."
    ]
    assert not of(StopServer, started.actions) and not of(Release, started.actions)
    routes = started.routes.models["m"]
    assert {v: r.server for v, r in routes.versions.items()} == {"1": on_old, "2": on_old}
    assert routes.resolve("Production") == "2"
    assert started.routes.timeout_s("m") == 20  # the gateway bounds requests by the new one

    # The new server answers: it is told to hold every version; the routes stay on the old.
    new = server(number=2, runtime=NEW)
    told = plan(want, actual(*versions, old, new), started.routes, now=2)
    assert of(Hold, told.actions) == [
        Hold(("m", "current", NEW), v, f"models:/m/{v}", Path(f"/home/models/m/{v}"))
        for v in ("1", "2")
    ]

    # One version ready on the new server moves; the other stays on the old one, which serves on.
    half = server(number=2, runtime=NEW, v1=HeldState.READY, v2=HeldState.LOADING)
    halfway = plan(want, actual(*versions, old, half), told.routes, now=3)
    on_new = ServerAddress(2, "/sockets/2.sock")
    routes = halfway.routes.models["m"]
    assert {v: r.server for v, r in routes.versions.items()} == {"1": on_new, "2": on_old}
    assert routes.versions["2"].message.startswith("Ready on the server with the previous")
    assert not of(StopServer, halfway.actions)

    # Both ready on the new server: every route moves; the old one stops at the next plan, once
    # no published table points at it (requests already on their way there finish).
    ready = server(number=2, runtime=NEW, v1=HeldState.READY, v2=HeldState.READY)
    moved = plan(want, actual(*versions, old, ready), halfway.routes, now=4)
    routes = moved.routes.models["m"]
    assert {v: r.server for v, r in routes.versions.items()} == {"1": on_new, "2": on_new}
    assert events(moved.actions) == ["Routes moved to the model server with the new settings."]
    assert not of(StopServer, moved.actions)

    stopped = plan(want, actual(*versions, old, ready), moved.routes, now=5)
    assert of(StopServer, stopped.actions) == [StopServer(old.key)]
    assert events(stopped.actions) == [
        "The old model server stopped: its versions are ready on the new one."
    ]
    assert not of(Release, stopped.actions) and not of(Hold, stopped.actions)
    after = plan(want, actual(*versions, ready), stopped.routes, now=6)
    assert after.actions == ()


def test_new_settings_whose_server_keeps_failing_leave_the_old_one_serving():
    versions = (prepared("1"),)
    old = server(v1=HeldState.READY)
    before = plan(desired(model(v1="None")), actual(*versions, old), RouteTable(), now=0).routes
    want = desired(dataclasses.replace(model(v1="None"), runtime=NEW))
    failing = server(
        number=2, runtime=NEW, health=Health.RESTARTING, message="Its model server exited."
    )
    planned = plan(want, actual(*versions, old, failing), before, now=1)
    route = planned.routes.models["m"].versions["1"]
    assert route.state is VersionState.READY and route.server == ServerAddress(1, "/sockets/1.sock")
    assert planned.actions == ()  # the supervisor restarts the new one; the old serves on


def test_new_tags_restart_nothing():
    defaults = ServingSettings()
    tagged = defaults.with_set({"tags": (("team", "fraud"),)})
    assert tagged.runtime == defaults.runtime
    world = actual(prepared("1"), server(v1=HeldState.READY))
    before = plan(desired(model(v1="None")), world, RouteTable(), now=0).routes
    want = desired(dataclasses.replace(model(v1="None"), runtime=tagged.runtime))
    assert plan(want, world, before, now=1).actions == ()


def sleepy(after: float | None = 10, **versions) -> DesiredModel:
    """Model m with `scale_to_zero_after` (seconds; None: never sleeps)."""
    return dataclasses.replace(model(**versions), scale_to_zero_after=after)


def with_requests(world: Actual, **last: float) -> Actual:
    return dataclasses.replace(world, last_request=last)


def test_an_idle_model_falls_asleep_then_its_servers_stop_and_its_preparations_stay():
    want = desired(sleepy(10, v1="Production", v2="None", aliases={"champion": "2"}))
    world = actual(prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.READY))
    awake = plan(want, world, RouteTable(), now=0)  # idle from its first plan
    assert awake.routes.models["m"].state is EndpointState.READY

    # A request at 5: idle from then on, so not asleep at 12.
    still = plan(want, with_requests(world, m=5), awake.routes, now=12)
    assert still.routes.models["m"].state is EndpointState.READY
    assert still.actions == ()

    # 10 s after its last request it falls asleep: no route points at a server from now on,
    # and the servers stop at the next plan (requests already on their way finish first).
    asleep = plan(want, with_requests(world, m=5), still.routes, now=15)
    routes = asleep.routes.models["m"]
    assert routes.state is EndpointState.SCALED_TO_ZERO
    assert events(asleep.actions) == [
        "Asleep after 10 s without requests; the next request wakes it."
    ]
    assert not of(StopServer, asleep.actions)
    assert {v: (r.state, r.server) for v, r in routes.versions.items()} == {
        "1": (VersionState.SCALED_TO_ZERO, None),
        "2": (VersionState.SCALED_TO_ZERO, None),
    }
    assert asleep.routes.servers() == set()
    # Its versions stay listed, and each stage and alias still names its version.
    assert routes.resolve("production") == "1" and routes.resolve("champion") == "2"
    assert routes.versions["1"].stages == ("Production",)

    stopped = plan(want, with_requests(world, m=5), asleep.routes, now=16)
    assert of(StopServer, stopped.actions) == [StopServer(("m", "current", RUNTIME))]
    assert not of(Forget, stopped.actions) and not of(Prepare, stopped.actions)
    assert events(stopped.actions) == []
    # Asleep with no server: nothing more to do, however long it sleeps.
    quiet = actual(prepared("1"), prepared("2"))
    later = plan(want, with_requests(quiet, m=5), stopped.routes, now=10_000)
    assert later.actions == ()
    assert later.routes.models["m"].state is EndpointState.SCALED_TO_ZERO


def test_a_request_wakes_a_sleeping_model_with_no_new_preparation():
    want = desired(sleepy(10, v1="None"))
    world = actual(prepared("1"), server(v1=HeldState.READY))
    awake = plan(want, world, RouteTable(), now=0)
    asleep = plan(want, world, awake.routes, now=10)
    assert asleep.routes.models["m"].state is EndpointState.SCALED_TO_ZERO
    quiet = actual(prepared("1"))
    slept = plan(want, quiet, asleep.routes, now=11).routes

    # A request at 50: it wakes, its server starts from the kept preparation.
    waking = plan(want, with_requests(quiet, m=50), slept, now=50)
    assert of(StartServer, waking.actions) == [StartServer(ServerSpec("m", HERE, RUNTIME))]
    assert not of(Prepare, waking.actions)
    routes = waking.routes.models["m"]
    assert routes.state is EndpointState.PENDING
    assert routes.versions["1"].state is VersionState.PENDING

    up = actual(prepared("1"), server(v1=HeldState.READY))
    ready = plan(want, with_requests(up, m=50), waking.routes, now=51)
    assert ready.routes.models["m"].state is EndpointState.READY
    assert ready.routes.models["m"].versions["1"].server == ServerAddress(1, "/sockets/1.sock")
    # Idle from when it woke: awake 9 s later, asleep again 10 s later.
    assert (
        plan(want, with_requests(up, m=50), ready.routes, now=59).routes.models["m"].state
        is EndpointState.READY
    )
    again = plan(want, with_requests(up, m=50), ready.routes, now=60)
    assert again.routes.models["m"].state is EndpointState.SCALED_TO_ZERO


def test_a_request_just_after_it_fell_asleep_finds_its_server_still_up():
    want = desired(sleepy(10, v1="None"))
    world = actual(prepared("1"), server(v1=HeldState.READY))
    awake = plan(want, world, RouteTable(), now=0)
    asleep = plan(want, world, awake.routes, now=10)
    woken = plan(want, with_requests(world, m=10.5), asleep.routes, now=10.5)
    assert not of(StopServer, woken.actions)
    routes = woken.routes.models["m"]
    assert routes.state is EndpointState.READY
    assert routes.versions["1"].server == ServerAddress(1, "/sockets/1.sock")


def test_a_model_without_the_setting_never_sleeps():
    want = desired(sleepy(None, v1="None"))
    world = actual(prepared("1"), server(v1=HeldState.READY))
    before = plan(want, world, RouteTable(), now=0).routes
    for now in (60, 3600, 10**7):
        planned = plan(want, world, before, now=now)
        assert planned.actions == ()
        assert planned.routes.models["m"].state is EndpointState.READY
        before = planned.routes


def test_a_model_still_loading_a_version_does_not_sleep():
    want = desired(sleepy(10, v1="None", v2="None"))
    world = actual(prepared("1"), prepared("2"), server(v1=HeldState.READY, v2=HeldState.LOADING))
    before = plan(want, world, RouteTable(), now=0).routes
    planned = plan(want, world, before, now=100)
    assert planned.routes.models["m"].state is EndpointState.READY
    assert not events(planned.actions)


def test_turning_the_setting_off_wakes_a_sleeping_model():
    world = actual(prepared("1"), server(v1=HeldState.READY))
    awake = plan(desired(sleepy(10, v1="None")), world, RouteTable(), now=0)
    asleep = plan(desired(sleepy(10, v1="None")), world, awake.routes, now=10)
    quiet = actual(prepared("1"))
    slept = plan(desired(sleepy(10, v1="None")), quiet, asleep.routes, now=11).routes
    woken = plan(desired(sleepy(None, v1="None")), quiet, slept, now=12)
    assert of(StartServer, woken.actions)
    assert woken.routes.models["m"].state is EndpointState.PENDING


def test_a_sleeping_model_prepares_a_new_version_and_forgets_an_archived_one():
    want = desired(sleepy(10, v1="None"))
    world = actual(prepared("1"), server(v1=HeldState.READY))
    awake = plan(want, world, RouteTable(), now=0)
    asleep = plan(want, world, awake.routes, now=10).routes
    moved = desired(sleepy(10, v2="Production"))
    planned = plan(moved, actual(prepared("1")), asleep, now=20)
    assert of(Prepare, planned.actions) == [Prepare("m", "2", "auto", "src 2")]
    assert Forget(("m", "1", "auto")) in planned.actions
    assert "Version 1 is no longer served." in events(planned.actions)
    routes = planned.routes.models["m"]
    assert routes.state is EndpointState.SCALED_TO_ZERO
    assert set(routes.versions) == {"2"} and routes.resolve("Production") == "2"


def test_a_wake_up_slower_than_the_setting_is_not_taken_for_idleness():
    want = desired(sleepy(10, v1="None"))
    world = actual(prepared("1"), server(v1=HeldState.READY))
    awake = plan(want, world, RouteTable(), now=0)
    slept = plan(want, world, awake.routes, now=10).routes
    quiet = actual(prepared("1"))
    slept = plan(want, quiet, slept, now=11).routes
    waking = plan(want, with_requests(quiet, m=50), slept, now=50).routes
    starting = actual(prepared("1"), server(v1=HeldState.LOADING))
    loading = plan(want, with_requests(starting, m=50), waking, now=70).routes
    assert loading.models["m"].state is EndpointState.PENDING

    # Ready 21 s after the request: it is published ready and stays up for its 10 s from now.
    up = actual(prepared("1"), server(v1=HeldState.READY))
    ready = plan(want, with_requests(up, m=50), loading, now=71)
    assert ready.routes.models["m"].state is EndpointState.READY
    assert events(ready.actions) == ["Version 1 is ready."]
    later = plan(want, with_requests(up, m=50), ready.routes, now=79)
    assert later.routes.models["m"].state is EndpointState.READY
    again = plan(want, with_requests(up, m=50), later.routes, now=80)
    assert again.routes.models["m"].state is EndpointState.SCALED_TO_ZERO
