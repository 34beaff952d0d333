"""`modelhost up`: the registry and the gateway in front of it, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import uvicorn
import uvloop

from modelhost.auth.setup import protect
from modelhost.batch.jobs_api import JobsAPI
from modelhost.batch.jobs_manager import RUNNER, JobManager
from modelhost.batch.jobs_service import Jobs
from modelhost.batch.jobs_store import JobStore
from modelhost.config import UpSettings
from modelhost.control.controller import Controller
from modelhost.control.isolation import Isolation
from modelhost.control.routes import RouteBoard
from modelhost.control.serving import ServingControl
from modelhost.control.store import StateStore
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
        # admin token may come as a flag: the scrub drops the gateway's variables by name (the
        # registry's secret among them, as MLFLOW_TRACKING_TOKEN) and their values.
        isolation = Isolation.for_platform(
            settings.home.resolve(), settings.model_user, [settings.admin_token]
        )
        store = StateStore.in_home(settings.home)
        _run(settings, checked.signing_in, checked.listener, isolation, store)


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
            settings.home, backend_store_uri=registry_url, body_timeout_s=settings.body_timeout_s
        )
    try:
        if embedded:
            registry_url = embedded.start()
            # The embedded registry answers only its secret: MLflow's clients in this process
            # (the controller's, the demo's) send MLFLOW_TRACKING_TOKEN as a Bearer token.
            os.environ["MLFLOW_TRACKING_TOKEN"] = embedded.secret
        assert registry_url is not None
        url = f"http://{settings.host}:{settings.port}"
        if settings.demo:
            _serve_demo(registry_url, store, url, signing_in)
        board = RouteBoard()
        controller = Controller(settings, registry_url, store, board, isolation)
        control = ServingControl(
            store, registry_url, controller.defaults, board, controller.nudge, controller.log_path
        )
        jobs = JobManager(
            JobStore(store.engine), settings.home, settings.batch_folder, registry_url,
            isolation, controller.events.record, RUNNER, settings.batch_jobs,
        )  # fmt: skip
        jobs.open()  # jobs a previous run left running end FAILED, saying why
        jobs_api = JobsAPI(Jobs(jobs.store, jobs, registry_url, settings.batch_folder))
        gateway = Gateway(
            settings, registry_url, control, embedded.secret if embedded else None, jobs_api
        )
        limits = ClientLimits(
            header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s
        )
        config = uvicorn.Config(
            # One path per request, before auth judges it (gateway/paths.py).
            Normalized(protect(gateway, settings, store) if signing_in else gateway),
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
            runner.run(_serve(uvicorn.Server(config), controller, jobs, listener))
    finally:
        if embedded:
            embedded.stop()


async def _serve(
    server: uvicorn.Server, controller: Controller, jobs: JobManager, listener: socket.socket
) -> None:
    """The gateway and the controller on one event loop, until Ctrl-C or SIGTERM; then the
    gateway stops first (answering what it holds), then batch jobs, then the model servers."""
    controlling = asyncio.create_task(controller.run(), name="controller")
    # The server catches the signal, shuts down, then raises it again for whoever set the
    # handlers before it: here, nobody needs to hear it again, only to stop what runs.
    before = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await server.serve(sockets=[listener])
    finally:
        controlling.cancel()
        await asyncio.gather(controlling, return_exceptions=True)
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
