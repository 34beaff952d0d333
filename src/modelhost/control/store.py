"""What the registry does not hold: which models are served, what happened to them, who did it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

serving = sa.Table(
    "serving",
    metadata,
    sa.Column("registered_model_name", sa.String, primary_key=True),
    sa.Column("enabled_at", sa.Float, nullable=False),
    # Which Python environment its versions run in (config.EnvManager); None: the platform's.
    sa.Column("env_manager", sa.String, nullable=True),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.Float, nullable=False, index=True),
    sa.Column("registered_model_name", sa.String, nullable=False, index=True),
    sa.Column("endpoint_version_name", sa.String, nullable=True),
    sa.Column("message", sa.String, nullable=False),
    sa.Column("actor", sa.String, nullable=True),  # who did it: audit events; None for modelhost
)


class StateStore:
    """SQLite under the home by default; any SQLAlchemy URL (PostgreSQL) works the same."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        metadata.create_all(self.engine)
        self._add_actor_column()
        self._add_env_manager_column()

    def _add_actor_column(self) -> None:
        """A state database made before events named who caused them gets the column."""
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("events")}
        if "actor" not in columns:
            with self.engine.begin() as db:
                db.execute(sa.text("ALTER TABLE events ADD COLUMN actor VARCHAR"))

    def _add_env_manager_column(self) -> None:
        """A state database made before models had serving settings gets the column."""
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("serving")}
        if "env_manager" not in columns:
            with self.engine.begin() as db:
                db.execute(sa.text("ALTER TABLE serving ADD COLUMN env_manager VARCHAR"))

    @classmethod
    def in_home(cls, home: Path) -> StateStore:
        return cls(f"sqlite:///{home / 'state.db'}")

    def enable(self, name: str) -> bool:
        """Turn serving on; False if it already was."""
        with self.engine.begin() as db:
            if db.execute(
                sa.select(serving).where(serving.c.registered_model_name == name)
            ).first():
                return False
            db.execute(serving.insert().values(registered_model_name=name, enabled_at=time.time()))
            return True

    def disable(self, name: str) -> bool:
        """Turn serving off; False if it was not on."""
        with self.engine.begin() as db:
            gone = db.execute(serving.delete().where(serving.c.registered_model_name == name))
            return gone.rowcount > 0

    def served(self) -> dict[str, str | None]:
        """Each served model's env_manager (None: the platform's default), oldest enabled first."""
        query = sa.select(serving.c.registered_model_name, serving.c.env_manager)
        with self.engine.connect() as db:
            return {name: manager for name, manager in db.execute(query.order_by("enabled_at"))}

    def set_env_manager(self, name: str, env_manager: str) -> bool:
        """Set a served model's env_manager; False if it is not served or already had it."""
        with self.engine.begin() as db:
            changed = db.execute(
                serving.update()
                .where(serving.c.registered_model_name == name)
                .where(
                    sa.or_(serving.c.env_manager.is_(None), serving.c.env_manager != env_manager)
                )
                .values(env_manager=env_manager)
            )
            return changed.rowcount > 0

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
                }
                for row in db.execute(query)
            ]
