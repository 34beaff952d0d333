"""The state database's schema, versioned with Alembic, as MLflow versions its own.

Every `modelhost up` brings the database to the newest revision it knows before it uses it,
holding the database's start lock (`start_lock`), so that nodes starting together against one
PostgreSQL database migrate it once, one after another. A database a newer modelhost migrated
is refused: this one does not know what the newer revisions changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from modelhost.errors import ModelhostError

log = logging.getLogger("modelhost.migrations")

FOLDER = Path(__file__).parent
# Any fixed number: nodes of one database agree on it (pg_advisory_lock's key).
LOCK_KEY = 0x6D6F64656C686F  # "modelho"


class NewerDatabase(ModelhostError):
    """The state database was migrated by a newer modelhost."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(FOLDER))
    return config


def head() -> str:
    """The newest revision this modelhost knows."""
    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def revision(engine: sa.Engine) -> str | None:
    """The database's revision; None for a new database or one made before migrations."""
    with engine.connect() as db:
        return MigrationContext.configure(db).get_current_revision()


def migrate(engine: sa.Engine) -> None:
    """Bring the database to `head()`: call it holding `start_lock(engine)`."""
    script = ScriptDirectory.from_config(_config())
    current = revision(engine)
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError:
            raise NewerDatabase(
                f"The state database {shown(engine)} is at revision {current}, which a newer "
                f"modelhost made; this one knows revisions up to {head()}. Run the newer "
                "modelhost on this node too (every node of one database runs the same version)."
            ) from None
    if current == script.get_current_head():
        return
    with engine.begin() as db:
        config = _config()
        config.attributes["connection"] = db
        command.upgrade(config, "head")
    log.info("Migrated the state database %s from %s to %s", shown(engine), current, head())


@contextlib.contextmanager
def start_lock(engine: sa.Engine) -> Iterator[None]:
    """Held by one node at a time while it migrates and starts: a PostgreSQL advisory lock,
    or a file lock beside a SQLite file (two `up` on one home wait for each other too)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as db:
            db.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            db.commit()
            try:
                yield
            finally:
                db.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                db.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with open(f"{engine.url.database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # the lock ends with the file's closing
    else:
        yield


def shown(engine: sa.Engine) -> str:
    """The database's URL with its password hidden, for messages and logs."""
    return engine.url.render_as_string(hide_password=True)
