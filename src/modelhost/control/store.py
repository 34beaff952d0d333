"""What the registry does not hold: which models are served, what happened to them, who did it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from modelhost import migrations

metadata = sa.MetaData()

serving = sa.Table(
    "serving",
    metadata,
    sa.Column("registered_model_name", sa.String, primary_key=True),
    sa.Column("enabled_at", sa.Float, nullable=False),
    # Which Python environment its versions run in (config.EnvManager); None: the platform's.
    sa.Column("env_manager", sa.String, nullable=True),
    # What its model servers run with (control/settings.py); None: the platform's default.
    sa.Column("workers", sa.Integer, nullable=True),
    sa.Column("max_batch_size", sa.Integer, nullable=True),
    sa.Column("max_batch_delay_ms", sa.Float, nullable=True),
    sa.Column("timeout_s", sa.Float, nullable=True),
    # What each replica reserves on a cluster node, and how many replicas (--engine ray).
    sa.Column("cpus", sa.Float, nullable=True),
    sa.Column("memory_mb", sa.Integer, nullable=True),
    sa.Column("min_replicas", sa.Integer, nullable=True),
    sa.Column("max_replicas", sa.Integer, nullable=True),
    # Seconds without requests before its servers stop; None: never.
    sa.Column("scale_to_zero_after", sa.Float, nullable=True),
    sa.Column("tags", sa.Text, nullable=True),  # JSON: [[key, value], ...]
)
# The serving table's settings columns, as the serving API names them.
SETTINGS = (
    "env_manager", "workers", "max_batch_size", "max_batch_delay_ms", "timeout_s", "cpus",
    "memory_mb", "min_replicas", "max_replicas", "scale_to_zero_after", "tags",
)  # fmt: skip

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.Float, nullable=False, index=True),
    sa.Column("registered_model_name", sa.String, nullable=False, index=True),
    sa.Column("endpoint_version_name", sa.String, nullable=True),
    sa.Column("message", sa.String, nullable=False),
    sa.Column("actor", sa.String, nullable=True),  # who did it: audit events; None for modelhost
    sa.Column("node", sa.String, nullable=True),  # which node recorded it
)

# Counters each change of what nodes share moves on, in the same transaction: every node reads
# them often (control/node.py) and, when one moved, reads what it counts again.
generations = sa.Table(
    "generations",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)
AUTH = "auth"  # users, tokens, grants and browser sessions
SERVING = "serving"  # served models and their settings


def generation(db: sa.Connection, name: str) -> int:
    return db.execute(sa.select(generations.c.value).where(generations.c.name == name)).scalar_one()


def moved(db: sa.Connection, name: str) -> None:
    """Move counter `name` on, in `db`'s transaction."""
    query = generations.update().where(generations.c.name == name)
    db.execute(query.values(value=generations.c.value + 1))


class StateStore:
    """SQLite under the home by default; PostgreSQL (any SQLAlchemy URL) for several nodes.

    Opening it migrates the database to this modelhost's schema (modelhost/migrations).
    `node` names the node whose events this store records.
    """

    def __init__(self, url: str, node: str | None = None) -> None:
        # A pooled connection the database dropped (restarted, failed over) is replaced, not
        # handed out to fail.
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.node = node
        with migrations.start_lock(self.engine):
            migrations.migrate(self.engine)

    @classmethod
    def in_home(cls, home: Path, node: str | None = None) -> StateStore:
        return cls(f"sqlite:///{home / 'state.db'}", node)

    def generation(self, name: str) -> int:
        """Counter `name` now (AUTH, SERVING): when it moves, something changed, on any node."""
        with self.engine.connect() as db:
            return generation(db, name)

    def enable(self, name: str) -> bool:
        """Turn serving on; False if it already was."""
        try:
            with self.engine.begin() as db:
                query = sa.select(serving).where(serving.c.registered_model_name == name)
                if db.execute(query).first():
                    return False
                db.execute(
                    serving.insert().values(registered_model_name=name, enabled_at=time.time())
                )
                moved(db, SERVING)
                return True
        except sa.exc.IntegrityError:  # another node turned it on meanwhile
            return False

    def disable(self, name: str) -> bool:
        """Turn serving off; False if it was not on."""
        with self.engine.begin() as db:
            gone = db.execute(serving.delete().where(serving.c.registered_model_name == name))
            if gone.rowcount:
                moved(db, SERVING)
            return gone.rowcount > 0

    def served(self) -> dict[str, dict[str, Any]]:
        """Each served model's settings that it sets (the rest are the platform's defaults),
        oldest enabled first."""
        query = sa.select(serving.c.registered_model_name, *(serving.c[k] for k in SETTINGS))
        with self.engine.connect() as db:
            rows = db.execute(query.order_by("enabled_at"))
            return {row[0]: _settings(row._mapping) for row in rows}

    def update(self, name: str, settings: dict[str, Any]) -> bool:
        """Set some settings of served model `name` (control/settings.py `parse`'s shape);
        False if it is not served."""
        values = dict(settings)
        if "tags" in values:
            values["tags"] = json.dumps([list(tag) for tag in values["tags"]])
        with self.engine.begin() as db:
            query = serving.update().where(serving.c.registered_model_name == name)
            if db.execute(query.values(**values)).rowcount:
                moved(db, SERVING)
                return True
            return False

    def record(
        self,
        name: str,
        message: str,
        version: str | None = None,
        actor: str | None = None,
        at: float | None = None,
    ) -> None:
        """An event of registered model (or grant prefix) `name`; `actor` is who caused it."""
        with self.engine.begin() as db:
            db.execute(
                events.insert().values(
                    timestamp=time.time() if at is None else at,
                    registered_model_name=name,
                    endpoint_version_name=version,
                    message=message,
                    actor=actor,
                    node=self.node,
                )
            )

    def events(self, name: str, limit: int = 200) -> list[dict[str, Any]]:
        """Newest first."""
        query = (
            sa.select(events)
            .where(events.c.registered_model_name == name)
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as db:
            return [
                {
                    "timestamp": int(row.timestamp * 1000),
                    "registered_model_name": row.registered_model_name,
                    "endpoint_version_name": row.endpoint_version_name,
                    "message": row.message,
                    "user": row.actor,
                    "node": row.node,
                }
                for row in db.execute(query)
            ]


def _settings(row: Any) -> dict[str, Any]:
    """The settings a row sets: those not None, tags as a tuple of (key, value)."""
    found = {k: row[k] for k in SETTINGS if row[k] is not None}
    if "tags" in found:
        found["tags"] = tuple((k, v) for k, v in json.loads(found["tags"]))
    return found
