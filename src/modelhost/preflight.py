"""What `modelhost up` checks before it starts anything, with light imports only, so that a
wrong setting is reported at once and nothing is left to stop: auth's settings and the admin
token, the home, and the port, bound here and handed to the gateway."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import socket
import tempfile
from dataclasses import dataclass

from modelhost.auth.tokens import MIN_CHOSEN_LENGTH
from modelhost.config import UpSettings
from modelhost.errors import ModelhostError

log = logging.getLogger("modelhost.auth")
stores_log = logging.getLogger("modelhost")


class SetupError(ModelhostError):
    """`modelhost up` cannot start with these settings; the message says which to change."""


@dataclass(frozen=True)
class Checked:
    signing_in: bool  # whether callers sign in
    listener: socket.socket  # the gateway's socket, bound


def preflight(settings: UpSettings) -> Checked:
    signing_in = auth_required(settings)
    check_admin_token(settings.admin_token)
    _check_home(settings)
    _check_stores(settings)
    _check_engine(settings)
    return Checked(signing_in, _bind(settings))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def auth_required(settings: UpSettings) -> bool:
    """Open only on loopback, or anywhere with --insecure; --auth turns it on anywhere."""
    if settings.auth and settings.insecure:
        raise SetupError("--auth and --insecure contradict each other: pass one.")
    if settings.auth:
        return True
    if is_loopback(settings.host) or settings.insecure:
        if settings.insecure and not is_loopback(settings.host):
            log.warning(
                "Serving %s with no auth (--insecure): anyone who reaches it may score, "
                "register and turn serving on and off.",
                settings.host,
            )
        return False
    log.info("Bound to %s, not loopback: auth is on (--insecure turns it off).", settings.host)
    return True


def check_admin_token(admin_token: str | None) -> None:
    """A chosen admin token must be long enough to be a secret."""
    if admin_token is not None and len(admin_token) < MIN_CHOSEN_LENGTH:
        raise SetupError(
            f"MODELHOST_ADMIN_TOKEN is shorter than {MIN_CHOSEN_LENGTH} characters: make one "
            """with python -c 'import secrets; print(secrets.token_urlsafe(32))'."""
        )


def _check_home(settings: UpSettings) -> None:
    """The home must be a folder this user can write in."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.home):
            pass
    except OSError as e:
        raise SetupError(
            f"The home {settings.home} cannot be used: {e.strerror or e}. Pick another with "
            "--home or MODELHOST_HOME."
        ) from None


def _check_engine(settings: UpSettings) -> None:
    """Ray installed and its cluster's head answering (Ray itself would retry for ever)."""
    if settings.engine != "ray":
        if settings.ray_address:
            raise SetupError("--ray-address is for --engine ray; add it, or drop the address.")
        return
    if importlib.util.find_spec("ray") is None:
        raise SetupError(
            "--engine ray needs Ray in modelhost's environment: pip install 'modelhost[ray]' "
            "(the same Ray and Python versions as the cluster's nodes)."
        )
    if not settings.ray_address:
        raise SetupError("--engine ray needs --ray-address HOST:PORT, the cluster's head.")
    host, _, port = settings.ray_address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SetupError(
            f"--ray-address {settings.ray_address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise SetupError(
            f"The Ray cluster's head at {settings.ray_address} does not answer ({e.strerror or e})"
            ": start it with `ray start --head`, or fix --ray-address."
        ) from None


def _check_stores(settings: UpSettings) -> None:
    """Database URLs that parse and whose driver is installed; artifacts only for a registry
    modelhost runs; and a warning where nodes would not share what they must."""
    external = (settings.registry_uri or "").startswith(("http://", "https://"))
    if settings.artifacts_destination and external:
        raise SetupError(
            "--artifacts-destination is for the registry modelhost runs; the MLflow server at "
            "--registry-uri keeps model files where it was told to. Drop one of the two."
        )
    for flag, uri in (
        ("--state-uri", settings.state_uri),
        ("--registry-uri", settings.registry_uri),
    ):
        if uri and not uri.startswith(("http://", "https://")):
            _check_database(flag, uri)
    if settings.state_uri and not settings.registry_uri:
        stores_log.warning(
            "The state database is shared (--state-uri) but the registry is under this node's "
            "home: other nodes will not see its models. Give every node the same --registry-uri."
        )
    database = (
        settings.registry_uri and not external and not settings.registry_uri.startswith("sqlite")
    )
    if database and not settings.artifacts_destination:
        stores_log.warning(
            "The registry's database is shared (--registry-uri) but its model files are under "
            "this node's home: other nodes cannot load them. Give every node the same "
            "--artifacts-destination (a shared folder, s3://...)."
        )


def _check_database(flag: str, uri: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise SetupError(
            f"{flag} is not a database URL SQLAlchemy knows: give one such as "
            "postgresql://USER:PASSWORD@HOST:5432/DB or sqlite:////path/to/file.db."
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        extra = " (pip install 'modelhost[postgres]')" if dialect.name == "postgresql" else ""
        raise SetupError(
            f"{flag} needs the database driver {e.name or dialect.driver}, which is not "
            f"installed{extra}."
        ) from None


def _bind(settings: UpSettings) -> socket.socket:
    """The gateway's listening socket, bound now so that a taken port stops us at once."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((settings.host.strip("[]"), settings.port))
    except OSError as e:
        listener.close()
        raise SetupError(
            f"Cannot listen on {settings.host}:{settings.port}: {e.strerror or e}. Pick another "
            "port with --port or MODELHOST_PORT (or stop what uses it)."
        ) from None
    return listener
