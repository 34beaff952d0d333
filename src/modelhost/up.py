"""`modelhost up`: the registry and the gateway in front of it, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import sqlalchemy as sa
import uvicorn
import uvloop

from modelhost import migrations
from modelhost.auth.setup import protect
from modelhost.batch.jobs_api import JobsAPI
from modelhost.batch.jobs_manager import RUNNER, JobManager
from modelhost.batch.jobs_service import Jobs
from modelhost.batch.jobs_store import JobStore
from modelhost.config import UpSettings
from modelhost.control.controller import Controller
from modelhost.control.isolation import Isolation
from modelhost.control.node import Counter, Node
from modelhost.control.routes import RouteBoard
from modelhost.control.serving import ServingControl
from modelhost.control.store import SERVING, StateStore
from modelhost.errors import ModelhostError
from modelhost.gateway.app import Gateway
from modelhost.gateway.client_limits import ClientLimits
from modelhost.gateway.paths import Normalized
from modelhost.preflight import Checked
from modelhost.registry.embedded import EmbeddedRegistry

log = logging.getLogger("modelhost")


# The controller reads the registry every second, and a read that fails is simply made again
# at the next tick; MLflow's own retries (minutes of back-off) would only stall it, and keep
# Ctrl-C waiting for a registry that is gone.
REGISTRY_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def run(settings: UpSettings, checked: Checked) -> None:
    """Run until interrupted; everything started here is stopped on the way out."""
    with checked.listener:
        # Model code reaches its files by real paths: it may not pass where a link lies. The
        # admin token and database URLs may come as flags: the scrub drops the gateway's
        # variables by name (the registry's secret among them, as MLFLOW_TRACKING_TOKEN) and
        # their values.
        secrets = [settings.admin_token, settings.state_uri, settings.registry_uri]
        isolation = Isolation.for_platform(settings.home.resolve(), settings.model_user, secrets)
        port = checked.listener.getsockname()[1]
        node = settings.node_name or f"{socket.gethostname()}:{port}"
        store = open_state(settings, node)
        _run(settings, checked.signing_in, checked.listener, isolation, store)


def open_state(settings: UpSettings, node: str) -> StateStore:
    """The state database, migrated to this modelhost's schema (modelhost/migrations)."""
    url = settings.state_uri or f"sqlite:///{settings.home / 'state.db'}"
    try:
        store = StateStore(url, node)
    except sa.exc.SQLAlchemyError as e:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        reason = str(e.orig if isinstance(e, sa.exc.DBAPIError) else e).strip().splitlines()
        raise StateStoreError(
            f"The state database {shown} cannot be opened: {reason[0] if reason else e}. "
            "Check --state-uri (MODELHOST_STATE_URI) and that the database answers."
        ) from None
    log.info("State database: %s; this node is %s", migrations.shown(store.engine), node)
    return store


class StateStoreError(ModelhostError):
    """The state database does not open."""


def _run(
    settings: UpSettings,
    signing_in: bool,
    listener: socket.socket,
    isolation: Isolation,
    store: StateStore,
) -> None:
    for name, value in REGISTRY_CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    embedded = None
    registry_url = settings.registry_uri
    if registry_url is None or not registry_url.startswith(("http://", "https://")):
        # A database URI (or none) gets MLflow's own server in front of it, so MLflow clients
        # reach it through the gateway like any other registry.
        embedded = EmbeddedRegistry(
            settings.home,
            backend_store_uri=registry_url,
            body_timeout_s=settings.body_timeout_s,
            artifacts_destination=settings.artifacts_destination,
        )
    try:
        url = f"http://{settings.host}:{listener.getsockname()[1]}"
        node = Node(store, store.node or url, url)
        # One node at a time: the registry migrates its database as it starts, and the first
        # admin and the demo model are made once, by whichever node comes first.
        with migrations.start_lock(store.engine):
            if embedded:
                registry_url = embedded.start()
                # The embedded registry answers only its secret: MLflow's clients in this
                # process (the controller's, the demo's) send MLFLOW_TRACKING_TOKEN as a Bearer
                # token.
                os.environ["MLFLOW_TRACKING_TOKEN"] = embedded.secret
            assert registry_url is not None
            if settings.demo:
                _serve_demo(registry_url, store, url, signing_in)
            node.join()
            board = RouteBoard()
            controller = Controller(settings, registry_url, store, board, isolation)
            # Served models changed on another node: read them now, not at the next second.
            node.watch(Counter(store, SERVING).moved, lambda _: controller.nudge())
            control = ServingControl(
                store, registry_url, controller.defaults, board, controller.nudge,
                controller.log_path, settings.engine,
            )  # fmt: skip
            jobs = JobManager(
                JobStore(store.engine, store.node), settings.home, settings.batch_folder,
                registry_url, isolation, controller.events.record, RUNNER, settings.batch_jobs,
            )  # fmt: skip
            jobs.open()  # jobs a previous run of this node left running end FAILED, saying why
            node.watch(jobs.store.cancels_asked, jobs.cancel_asked)
            node.watch(jobs.end_jobs_of_gone_nodes)
            jobs_api = JobsAPI(Jobs(jobs.store, jobs, registry_url, settings.batch_folder))
            gateway = Gateway(
                settings, registry_url, control, embedded.secret if embedded else None, jobs_api,
                node,
            )  # fmt: skip
            app = gateway
            if signing_in:
                app = auth = protect(gateway, settings, store)
                node.watch(auth.access.news, auth.changed_elsewhere)
        limits = ClientLimits(
            header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s
        )
        config = uvicorn.Config(
            # One path per request, before auth judges it (gateway/paths.py).
            Normalized(app),
            http=limits.protocol(),  # httptools, with bounds on slow and bloated requests
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # the peer's own address counts, never X-Forwarded-For
            server_header=False,
            log_level="info",
            timeout_graceful_shutdown=10,
        )
        log.info("modelhost is up on %s; point MLflow at it: MLFLOW_TRACKING_URI=%s", url, url)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(uvicorn.Server(config), controller, node, jobs, listener))
    finally:
        if embedded:
            embedded.stop()


async def _serve(
    server: uvicorn.Server,
    controller: Controller,
    node: Node,
    jobs: JobManager,
    listener: socket.socket,
) -> None:
    """The gateway, the controller and the node's watch of the state database on one event
    loop, until Ctrl-C or SIGTERM; then the gateway stops first (answering what it holds), then
    batch jobs, then the model servers."""
    controlling = asyncio.create_task(controller.run(), name="controller")
    watching = asyncio.create_task(node.run(), name="node")
    # The server catches the signal, shuts down, then raises it again for whoever set the
    # handlers before it: here, nobody needs to hear it again, only to stop what runs.
    before = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await server.serve(sockets=[listener])
    finally:
        controlling.cancel()
        watching.cancel()
        await asyncio.gather(controlling, watching, return_exceptions=True)
        await asyncio.to_thread(jobs.stop)  # before the controller's event log closes
        await controller.stop()
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _serve_demo(registry_url: str, store: StateStore, url: str, signing_in: bool) -> None:
    from modelhost.demo import DEMO_MODEL_NAME, ONE_FLOWER, register_demo

    register_demo(registry_url)
    if store.enable(DEMO_MODEL_NAME):
        store.record(DEMO_MODEL_NAME, "Serving enabled by --demo.")
    print(
        f"\nThe demo model {DEMO_MODEL_NAME} is served. Once its version 1 is ready (seconds):\n"
        f"  curl -s {url}/model/{DEMO_MODEL_NAME}/1/invocations "
        + ('-H "Authorization: Bearer $MODELHOST_TOKEN" ' if signing_in else "")
        + f"-H 'Content-Type: application/json' \\\n    -d '{ONE_FLOWER}'\n",
        flush=True,
    )
