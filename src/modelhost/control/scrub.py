"""The environment variables model code gets: the platform's, minus every credential.

Any signed-in user may register a model and serve it, so what a model server or an
environment build sees must hold no secret of the platform: no modelhost or MLflow credential,
no password, cloud key or token, no database URI with a password, and no variable whose value
holds any of those secrets under another name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# modelhost's own settings (the admin token among them) and where MLflow's credentials live;
# model servers load from the copy the controller fetched, so they need no registry at all.
DROPPED_PREFIXES = ("MODELHOST_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_")
# Names that say "credential": AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, PGPASSWORD, HF_TOKEN,
# AZURE_STORAGE_CONNECTION_STRING, GOOGLE_APPLICATION_CREDENTIALS, SSH_AUTH_SOCK, MYSQL_PWD...
SECRET_NAME = re.compile(
    r"TOKEN|PASSWORD|PASSWD|_PWD$|SECRET|CREDENTIAL|AUTH|API_?KEY|ACCESS_KEY|PRIVATE_KEY"
    r"|SESSION|CONNECTION_STRING|COOKIE",
    re.IGNORECASE,
)
# scheme://user:password@host, as in database and broker URIs.
PASSWORD_IN_URI = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
# Shorter values are too common to be told apart from a secret they happen to equal.
MIN_SECRET_CHARS = 8


def scrubbed(environ: Mapping[str, str], secrets: Iterable[str | None] = ()) -> dict[str, str]:
    """`environ` without credentials; `secrets` are values no kept variable may contain."""
    dropped = {name for name in environ if _secret_name(name)}
    known = {s for s in [*secrets, *(environ[name] for name in dropped)] if _long(s)}
    return {
        name: value
        for name, value in environ.items()
        if name not in dropped
        and not PASSWORD_IN_URI.search(value)
        and not any(secret in value for secret in known)
    }


def _secret_name(name: str) -> bool:
    return name.upper().startswith(DROPPED_PREFIXES) or SECRET_NAME.search(name) is not None


def _long(secret: str | None) -> bool:
    return secret is not None and len(secret) >= MIN_SECRET_CHARS
