"""Settings: built once per process from flags or MODELHOST_* variables, then passed down."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

MIB = 1024 * 1024


class EnvManager(StrEnum):
    """Which Python environment a model is served in."""

    AUTO = "auto"  # the current one when it satisfies the model, else one built for it
    LOCAL = "local"  # always the current one
    UV = "uv"  # always one built for the model with uv


@dataclass(frozen=True)
class ServeSettings:
    """How a model server serves: one model (`modelhost serve`) or versions of one (platform)."""

    model_uri: str  # the model of `modelhost serve`; empty for a platform server
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    max_batch_size: int = 2048
    max_batch_delay_ms: float = 2.0
    max_body_mb: float = 16.0
    timeout_s: float = 60.0
    env_manager: str = EnvManager.AUTO.value  # one of EnvManager
    fd: int | None = None  # a platform server's listening Unix socket, handed over open
    # Where the model's artifacts were downloaded to; set once by the parent process.
    local_path: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    # Worker processes are started by the ASGI server, so settings travel in one variable.
    ENV = "MODELHOST_SERVE_SETTINGS"

    def export(self) -> None:
        os.environ[self.ENV] = json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServeSettings:
        try:
            return cls(**json.loads(os.environ[cls.ENV]))
        except KeyError:
            raise RuntimeError(f"{cls.ENV} is not set: start with `modelhost serve`.") from None


def default_home() -> Path:
    return Path(os.environ.get("MODELHOST_HOME", Path.home() / ".modelhost"))


@dataclass(frozen=True)
class UpSettings:
    """How `modelhost up` runs the platform."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8080
    # None: an embedded registry under the home. May hold a password: kept out of repr.
    registry_uri: str | None = dataclasses.field(default=None, repr=False)
    # Served models, settings, events, users, tokens, grants, batch jobs: a SQLAlchemy URL
    # (PostgreSQL, shared by every node), or None: SQLite under the home.
    state_uri: str | None = dataclasses.field(default=None, repr=False)
    # Where the embedded registry keeps model files; None: under the home.
    artifacts_destination: str | None = None
    node_name: str | None = None  # this node, in events and jobs; None: <hostname>:<port>
    # What runs model servers: "local" (processes of this machine) or "ray" (processes owned
    # by Ray actors on the cluster at `ray_address`, host:port of its head's GCS).
    engine: str = "local"
    ray_address: str | None = None
    demo: bool = False
    max_body_mb: float = ServeSettings.max_body_mb
    timeout_s: float = ServeSettings.timeout_s
    env_manager: str = EnvManager.AUTO.value  # for served models that do not set their own
    auth: bool = False  # sign callers in; on by itself off loopback unless `insecure`
    insecure: bool = False  # serve a non-loopback address with no auth
    admin_token: str | None = dataclasses.field(default=None, repr=False)  # the first admin's
    header_timeout_s: float = 10.0  # a request's head must arrive within this, else 408
    body_timeout_s: float = 30.0  # and its body within this after it, longer as it arrives
    registry_requests_per_client: int = 64  # in flight from one address; more get 429
    model_user: str = "modelhost-model"  # as root, model code runs as this unprivileged user
    default_experiment_permission: str = "READ"  # on experiments no grant names, as MLflow's
    max_artifact_mb: float = 1024.0  # the largest artifact file one upload may write
    batch_root: Path | None = None  # batch jobs read and write only here; None: <home>/batch
    batch_jobs: int = 2  # batch jobs running at once; more wait, PENDING
    fork_servers: bool = True  # model servers fork from a process that imported what they need

    @property
    def batch_folder(self) -> Path:
        return (self.batch_root or self.home / "batch").resolve()

    @property
    def max_artifact_bytes(self) -> int:
        return int(self.max_artifact_mb * MIB)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)
