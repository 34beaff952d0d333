"""Planning: what should run (desired) and what runs (actual) in; actions and routes out.

A pure function: no process, no network, no clock of its own (`now` is given), so every case
the platform meets can be tested by building its inputs. The controller calls it after every
change it hears of, carries out the actions, and publishes the routes.

The rules, per served model:
- each desired version is prepared with the model's env_manager (artifacts fetched, environment
  built); a failed preparation is tried again once its back-off is over;
- a model has one server per environment its prepared versions need, and each server is told to
  hold exactly the versions prepared for it;
- a version is ready when its server is up and has loaded it; only then does a route point at it;
- when env_manager changes, each version serves from where it was until it is ready in the new
  environment; when a stage or alias moves, it keeps its old version until the new one is ready;
- when what its servers run with changes (workers, batching, timeout: its `runtime`), a server
  with the new runtime starts beside each old one; each version's route stays on the old server
  until the new one holds it ready, and an old server stops once no version needs it and no
  published route points at it (so requests already on their way there finish);
- a model with `scale_to_zero_after` that has been ready, loading nothing, and got no request
  for that long falls asleep: its routes point at no server from then on, and at the next plan its
  servers stop (so requests already on their way there finish first); its preparations stay, so
  a request after that (the gateway notes each in `Actual.last_request`) wakes it with no fetch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from modelhost.control.placement import Preparation, PreparationKey, PreparationState
from modelhost.control.routes import (
    EMPTY,
    EndpointState,
    ModelRoutes,
    RouteTable,
    VersionRoute,
    VersionState,
    empty,
    frozen,
)
from modelhost.control.settings import Runtime, Scale
from modelhost.control.supervisor import (
    CURRENT,
    Health,
    HeldState,
    ServerKey,
    ServerSpec,
    ServerView,
    environment_key,
)

STAGES = ("Production", "Staging")


@dataclass(frozen=True)
class DesiredModel:
    """What one served model should serve, from its serving settings and the registry."""

    name: str
    env_manager: str
    versions: Mapping[str, str] | None = None  # version -> stage; None: the registry not read yet
    aliases: Mapping[str, str] = field(default_factory=empty)  # alias -> version
    # Version -> what its artifacts are (source, time)
    identities: Mapping[str, str] = field(default_factory=empty)
    runtime: Runtime = field(default_factory=Runtime)  # what its model servers run with
    scale_to_zero_after: float | None = None  # seconds idle before it sleeps; None: never
    scale: Scale = field(default_factory=Scale)  # its replicas, where the supervisor has them


@dataclass(frozen=True)
class Actual:
    preparations: Mapping[PreparationKey, Preparation] = field(default_factory=empty)
    servers: Mapping[ServerKey, ServerView] = field(default_factory=empty)
    # Served model -> when its last scoring request came (the clock `now` is on)
    last_request: Mapping[str, float] = field(default_factory=empty)


@dataclass(frozen=True)
class Prepare:
    name: str
    version: str
    manager: str
    identity: str
    failures: int = 0  # failed preparations of this version in a row, for its back-off


@dataclass(frozen=True)
class Forget:
    """Give up a preparation (stopping it if it runs): its version is gone or served elsewhere."""

    key: PreparationKey


@dataclass(frozen=True)
class StartServer:
    spec: ServerSpec


@dataclass(frozen=True)
class StopServer:
    key: ServerKey


@dataclass(frozen=True)
class Hold:
    key: ServerKey
    version: str
    model_uri: str
    local_path: Path


@dataclass(frozen=True)
class Release:
    key: ServerKey
    version: str


@dataclass(frozen=True)
class Rescale:
    """Run the server's replicas within `scale` (a change of min or max replicas)."""

    key: ServerKey
    scale: Scale


@dataclass(frozen=True)
class Record:
    """An event of the model's."""

    name: str
    message: str
    version: str | None = None


Action = Prepare | Forget | StartServer | StopServer | Hold | Release | Rescale | Record


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    routes: RouteTable


def plan(
    desired: Mapping[str, DesiredModel], actual: Actual, before: RouteTable, now: float
) -> Plan:
    actions: list[Action] = []
    models: dict[str, ModelRoutes] = {}
    for name, model in desired.items():
        models[name] = _plan_model(model, actual, before.models.get(name), now, actions)
    gone = (
        set(before.models)
        | {name for name, _, _ in actual.preparations}
        | {name for name, _, _ in actual.servers}
    ) - set(desired)
    for name in sorted(gone):
        actions.extend(Forget(key) for key in actual.preparations if key[0] == name)
        actions.extend(StopServer(key) for key in actual.servers if key[0] == name)
        if name in before.models:
            actions.append(Record(name, "Serving disabled: the model servers stopped."))
    return Plan(tuple(actions), RouteTable(frozen(models)))


def _plan_model(
    model: DesiredModel,
    actual: Actual,
    before: ModelRoutes | None,
    now: float,
    actions: list[Action],
) -> ModelRoutes:
    name, manager = model.name, model.env_manager
    if before is None:
        message = f"Preparing its versions to serve (env_manager {manager})."
        actions.append(Record(name, message))
    elif before.env_manager != manager:
        actions.append(Record(name, f"env_manager is now {manager}: preparing the versions again."))
    if model.versions is None:  # nothing known yet: keep what was (servers are looked after)
        return before or ModelRoutes(
            message="Reading its versions from the registry.", env_manager=manager,
            runtime=model.runtime, since=now,
        )  # fmt: skip
    preparations = {
        (version, with_manager): preparation
        for (of, version, with_manager), preparation in actual.preparations.items()
        if of == name
    }
    servers = {(env, rt): view for (of, env, rt), view in actual.servers.items() if of == name}
    last_request = actual.last_request.get(name)
    since = now if before is None else before.since
    if before is not None and before.state is EndpointState.SCALED_TO_ZERO:
        if model.scale_to_zero_after is not None and (
            last_request is None or last_request <= before.since
        ):
            return _asleep(model, preparations, servers, before, now, actions)
        since = now  # woken (by a request, or the setting turned off): idle from now on
    before_versions = before.versions if before else EMPTY
    runtime = model.runtime

    _prepare(model, preparations, now, actions)
    routes: dict[str, VersionRoute] = {}
    wanted: dict[str, dict[str, Preparation]] = {}  # environment key -> version -> preparation
    fresh: set[str] = set()  # the environments of versions prepared with the current manager
    for version in model.versions:
        current = preparations.get((version, manager))
        route = _shown(current, servers, runtime)
        previous = [
            p
            for (v, m), p in preparations.items()
            if v == version and m != manager and p.state is PreparationState.PREPARED
        ]
        if route.state is VersionState.READY:
            actions.extend(Forget((name, version, p.manager)) for p in previous)
            previous = []
        for p in previous:  # serve on from where it was until the new one is ready
            old = _shown(p, servers, runtime)
            if old.state is VersionState.READY:
                message = f"Ready in its previous environment; in the new one: {route.message}"
                route = VersionRoute(VersionState.READY, message, old.server)
        for p in [*previous, current]:
            if p is not None and p.state is PreparationState.PREPARED:
                assert p.environment is not None, "a prepared version has its environment"
                wanted.setdefault(environment_key(p.environment), {})[version] = p
                if p is current:
                    fresh.add(environment_key(p.environment))
        routes[version] = replace(route, **_named(model, version))
        _record_change(name, version, route, before_versions.get(version), actions)
    for version in before_versions.keys() - model.versions.keys():
        actions.append(Record(name, f"Version {version} is no longer served.", version))
    for version, with_manager in preparations:
        if version not in model.versions:
            actions.append(Forget((name, version, with_manager)))

    routed = {r.server.number for r in before_versions.values() if r.server is not None}
    _run_servers(name, runtime, model.scale, wanted, fresh, servers, routed, actions)
    _record_moves(name, runtime, servers, before_versions, routes, actions)
    refs = _refs(model, routes, before.refs if before else EMPTY)
    state, message = _endpoint_state(servers, routes)
    settled = (
        state is EndpointState.READY
        and bool(routes)
        and all(route.state is not VersionState.PENDING for route in routes.values())
    )
    if not settled:
        since = now  # idle time counts once it is ready (a slow wake-up is not idleness)
    after = model.scale_to_zero_after
    idle_since = since if last_request is None else max(since, last_request)
    if (
        after is not None
        and settled
        # A table that routes to it has been published: requests waiting for it get through.
        and before is not None
        and before.state is EndpointState.READY
        and now - idle_since >= after
    ):
        asleep = _sleeping(model, now)  # its servers stop at the next plan
        actions.append(Record(name, asleep.message))
        return asleep
    return ModelRoutes(state, message, manager, frozen(routes), frozen(refs), runtime, since)


def _asleep(
    model: DesiredModel,
    preparations: Mapping[tuple[str, str], Preparation],
    servers: Mapping[tuple[str, Runtime], ServerView],
    before: ModelRoutes,
    now: float,
    actions: list[Action],
) -> ModelRoutes:
    """A sleeping model: its servers stop (no route has pointed at them since it fell asleep);
    its versions stay prepared and new ones are prepared, so waking it needs no fetch."""
    assert model.versions is not None
    name = model.name
    _prepare(model, preparations, now, actions)
    for version in before.versions.keys() - model.versions.keys():
        actions.append(Record(name, f"Version {version} is no longer served.", version))
    for version, with_manager in preparations:
        if version not in model.versions:
            actions.append(Forget((name, version, with_manager)))
    actions.extend(StopServer((name, env, rt)) for env, rt in servers)
    return _sleeping(model, before.since)


def _sleeping(model: DesiredModel, since: float) -> ModelRoutes:
    """The routes of a sleeping model: every version listed, no server; each stage and alias
    names its version, so a request by any of them wakes the model."""
    assert model.versions is not None
    asleep = "Asleep: the next request wakes it."
    versions = {
        version: VersionRoute(VersionState.SCALED_TO_ZERO, asleep, **_named(model, version))
        for version in model.versions
    }
    message = (
        f"Asleep after {model.scale_to_zero_after:g} s without requests; the next request wakes it."
    )
    refs = {ref: v for ref, v in _targets(model).items() if v in versions}
    return ModelRoutes(
        EndpointState.SCALED_TO_ZERO, message, model.env_manager, frozen(versions),
        frozen(refs), model.runtime, since,
    )  # fmt: skip


def _prepare(
    model: DesiredModel,
    preparations: Mapping[tuple[str, str], Preparation],
    now: float,
    actions: list[Action],
) -> None:
    """Prepare new versions, and failed ones whose back-off is over."""
    assert model.versions is not None
    for version in model.versions:
        preparation = preparations.get((version, model.env_manager))
        identity = model.identities.get(version, "")
        if preparation is None:
            if not any(v == version for v, _ in preparations):
                actions.append(Record(model.name, f"Deploying version {version}.", version))
            actions.append(Prepare(model.name, version, model.env_manager, identity))
        elif (
            preparation.state is PreparationState.FAILED
            and preparation.retry_at is not None
            and now >= preparation.retry_at
        ):
            actions.append(
                Prepare(model.name, version, model.env_manager, identity, preparation.failures)
            )


def _shown(
    preparation: Preparation | None,
    servers: Mapping[tuple[str, Runtime], ServerView],
    runtime: Runtime,
) -> VersionRoute:
    """A version's route, from its preparation and the server it was prepared for: the one
    with the current runtime, or until that holds it ready, one with an earlier runtime."""
    route = _on_server(preparation, servers, runtime)
    if preparation is None or route.state is VersionState.READY:
        return route
    for (env, rt), old in servers.items():
        if rt == runtime or old.health is not Health.UP:
            continue
        assert preparation.environment is not None, "a prepared version has a server"
        held = old.versions.get(preparation.version)
        if (
            env == environment_key(preparation.environment)
            and held is not None
            and held.state is HeldState.READY
        ):
            message = "Ready on the server with the previous settings; on the new one: "
            address = old.address_of(preparation.version)
            return VersionRoute(VersionState.READY, message + route.message, address)
    return route


def _on_server(
    preparation: Preparation | None,
    servers: Mapping[tuple[str, Runtime], ServerView],
    runtime: Runtime,
) -> VersionRoute:
    """A version's route on the server of its environment with `runtime`."""
    if preparation is None:
        return VersionRoute(VersionState.PENDING, "Waiting to be prepared.")
    if preparation.state is PreparationState.PREPARING:
        return VersionRoute(VersionState.PENDING, preparation.message)
    if preparation.state is PreparationState.FAILED:
        return VersionRoute(VersionState.FAILED, preparation.message)
    assert preparation.environment is not None, "a prepared version has its environment"
    server = servers.get((environment_key(preparation.environment), runtime))
    if server is None or server.health is Health.STARTING:
        return VersionRoute(VersionState.PENDING, "Starting its model server.")
    if server.health is Health.FAILED:
        return VersionRoute(VersionState.FAILED, server.message)
    if server.health is not Health.UP:
        return VersionRoute(VersionState.PENDING, server.message)
    held = server.versions.get(preparation.version)
    if held is None:
        return VersionRoute(VersionState.PENDING, "Loading the model.")
    if held.state is HeldState.LOADING:
        return VersionRoute(VersionState.PENDING, held.message)
    if held.state is HeldState.FAILED:
        return VersionRoute(VersionState.FAILED, held.message)
    return VersionRoute(VersionState.READY, held.message, server.address_of(preparation.version))


def _record_change(
    name: str,
    version: str,
    route: VersionRoute,
    before: VersionRoute | None,
    actions: list[Action],
) -> None:
    if before is not None and before.state is route.state:
        return
    if route.state is VersionState.READY:
        actions.append(Record(name, f"Version {version} is ready.", version))
    elif route.state is VersionState.FAILED:
        actions.append(Record(name, f"Version {version} failed: {route.message}", version))


def _run_servers(
    name: str,
    runtime: Runtime,
    scale: Scale,
    wanted: Mapping[str, Mapping[str, Preparation]],
    fresh: set[str],
    servers: Mapping[tuple[str, Runtime], ServerView],
    routed: set[int],
    actions: list[Action],
) -> None:
    """A server with `runtime` for each environment the prepared versions need, holding exactly
    those; servers with an earlier runtime serve on until they are needed no more."""
    for env, rt in sorted((k for k in servers if k[0] not in wanted), key=lambda k: k[0]):
        actions.append(StopServer((name, env, rt)))
        actions.append(Record(name, f"{describe(env)} stopped: no version needs it now."))
    for env, versions in wanted.items():
        server = servers.get((env, runtime))
        earlier = {rt: view for (e, rt), view in servers.items() if e == env and rt != runtime}
        for rt, old in earlier.items():
            on_its_way = old.address is not None and old.address.number in routed
            if not _still_needed(old, server, versions) and not on_its_way:
                actions.append(StopServer((name, env, rt)))
                old_one = describe(env).replace("The model server", "The old model server", 1)
                message = f"{old_one} stopped: its versions are ready on the new one."
                actions.append(Record(name, message))
        if server is None:
            if earlier and env not in fresh:
                continue  # the old environment of an env_manager change: it serves on as it is
            first = next(iter(versions.values()))
            assert first.environment is not None, "a prepared version has its environment"
            spec = ServerSpec(name, first.environment, runtime, scale, first.local_path)
            actions.append(StartServer(spec))
            if earlier:
                message = f"Starting a model server with the new settings ({_said(runtime)})."
                actions.append(Record(name, message))
            continue
        key = (name, env, runtime)
        if server.scale != scale:
            actions.append(Rescale(key, scale))
        if server.health is not Health.UP:
            continue  # told what to hold once it answers
        for version in sorted(versions.keys() - server.versions.keys(), key=_number):
            local_path = versions[version].local_path
            assert local_path is not None, "a prepared version has its artifacts"
            actions.append(Hold(key, version, f"models:/{name}/{version}", local_path))
        for version in sorted(server.versions.keys() - versions.keys(), key=_number):
            actions.append(Release(key, version))


def _still_needed(
    old: ServerView, new: ServerView | None, versions: Mapping[str, Preparation]
) -> bool:
    """Whether a server with an earlier runtime holds ready a version the new one does not."""
    if old.health is not Health.UP:
        return False
    for version, held in old.versions.items():
        if version not in versions or held.state is not HeldState.READY:
            continue
        ready_there = new is not None and new.health is Health.UP and (
            (now := new.versions.get(version)) is not None and now.state is HeldState.READY
        )  # fmt: skip
        if not ready_there:
            return True
    return False


def _record_moves(
    name: str,
    runtime: Runtime,
    servers: Mapping[tuple[str, Runtime], ServerView],
    before: Mapping[str, VersionRoute],
    routes: Mapping[str, VersionRoute],
    actions: list[Action],
) -> None:
    """Say when the last route on a server with an earlier runtime moved to the new ones."""
    old = {
        view.address.number
        for (_, rt), view in servers.items()
        if rt != runtime and view.address is not None
    }
    if not old:
        return
    was_on_old = any(r.server is not None and r.server.number in old for r in before.values())
    on_old = any(r.server is not None and r.server.number in old for r in routes.values())
    if was_on_old and not on_old:
        actions.append(Record(name, "Routes moved to the model server with the new settings."))


def _said(runtime: Runtime) -> str:
    said = (
        f"workers {runtime.workers}, max_batch_size {runtime.max_batch_size}, "
        f"max_batch_delay_ms {runtime.max_batch_delay_ms:g}, timeout_s {runtime.timeout_s:g}"
    )
    placed = Runtime()
    if (runtime.cpus, runtime.memory_mb) != (placed.cpus, placed.memory_mb):  # on a cluster
        said += f", cpus {runtime.cpus:g}, memory_mb {runtime.memory_mb}"
    return said


def _refs(
    model: DesiredModel, routes: Mapping[str, VersionRoute], before: Mapping[str, str]
) -> dict[str, str]:
    """Each stage and alias -> the ready version it names; a moved one keeps its old version
    (if still served and ready) until the new one is ready."""
    targets = _targets(model)
    ready = {v for v, route in routes.items() if route.state is VersionState.READY}
    refs = {}
    for ref, target in targets.items():
        if target in ready:
            refs[ref] = target
        elif before.get(ref) in ready:
            refs[ref] = before[ref]
    return refs


def _targets(model: DesiredModel) -> dict[str, str]:
    """Each alias and stage -> the version the registry says it names."""
    assert model.versions is not None
    targets = dict(model.aliases)
    for stage in STAGES:
        staged = [v for v, s in model.versions.items() if s == stage]
        if staged:
            targets[stage] = max(staged, key=_number)
    return targets


def _named(model: DesiredModel, version: str) -> dict[str, tuple[str, ...]]:
    """The stage and aliases the registry gives `version`, as its route shows them."""
    assert model.versions is not None
    stage = model.versions[version]
    return {
        "stages": (stage,) if stage in STAGES else (),
        "aliases": tuple(sorted(a for a, v in model.aliases.items() if v == version)),
    }


def _endpoint_state(
    servers: Mapping[str, ServerView], routes: Mapping[str, VersionRoute]
) -> tuple[EndpointState, str]:
    """Ready once a version answers: what a person waiting to send a request wants to know."""
    ready = sum(route.state is VersionState.READY for route in routes.values())
    if ready == len(routes) == 1:
        return EndpointState.READY, "Ready to answer."
    if ready:
        return EndpointState.READY, f"{ready} of {len(routes)} versions are ready."
    if not routes:
        return EndpointState.READY, "No version to serve."
    if all(route.state is VersionState.FAILED for route in routes.values()):
        return EndpointState.FAILED, "No version could be served; see list-versions."
    if any(s.health is Health.UP for s in servers.values()):
        return EndpointState.PENDING, "Loading the versions."
    if servers:
        return EndpointState.PENDING, "Starting the model server."
    return EndpointState.PENDING, "Preparing the versions."


def describe(env: str) -> str:
    """How events name the server of a model that runs in environment `env`."""
    if env == CURRENT:
        return "The model server"
    return f"The model server in environment {env}"


def _number(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)
