"""This `modelhost up` as one node among those that share its state database.

Every node serves every served model from its own model servers; what they share lives in the
database. Each node reads it on its own: the controller reads the served models every second
(control/desired.py), and this, twice a second on a thread, says the node is alive
(`nodes.seen_at`) and runs the watches other parts set, each a small read whose result, if
any, is applied on the event loop: the served models read again at once when their counter
moved, the users, tokens and grants the gateway keeps in memory when theirs did, the cancels
asked on another node for this node's jobs, the jobs of nodes that died.
A node whose database stops answering says so on /health; `listed` is what
/api/2.0/modelhost/nodes shows of them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from modelhost.control.store import StateStore

log = logging.getLogger("modelhost.node")

nodes = sa.Table(
    "nodes",
    sa.MetaData(),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("url", sa.String, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
)
INTERVAL_S = 0.5
# Beyond this without a good read, the database counts as unreachable (a slow query is not).
STALE_S = 5.0
ALIVE_S = 5.0  # a node not seen for longer is shown as not alive (it says so twice a second)

Read = Callable[[], Any]  # on a thread: the news, or None
Apply = Callable[[Any], None]  # on the event loop


class Node:
    def __init__(self, store: StateStore, name: str, url: str, interval_s: float = INTERVAL_S):
        self.store = store
        self.name = name
        self.url = url
        self.interval_s = interval_s
        self._watches: list[tuple[Read, Apply | None]] = []
        self._read_at = time.monotonic()
        self._failing = False

    def join(self) -> None:
        """Say this node has started (again): before it serves."""
        now = time.time()
        row = {"url": self.url, "started_at": now, "seen_at": now}
        with self.store.engine.begin() as db:
            if not db.execute(
                nodes.update().where(nodes.c.name == self.name).values(**row)
            ).rowcount:
                db.execute(nodes.insert().values(name=self.name, **row))

    def watch(self, read: Read, apply: Apply | None = None) -> None:
        """Run `read` at every tick, and `apply` with what it found, if anything."""
        self._watches.append((read, apply))

    @property
    def store_reachable(self) -> bool:
        return time.monotonic() - self._read_at < STALE_S

    async def run(self) -> None:
        while True:
            news = await asyncio.to_thread(self._tick)
            for apply, found in news:
                try:
                    apply(found)
                except Exception:  # a bug in one watch: the others, and the next tick, go on
                    log.exception("Applying what another node changed failed")
            await asyncio.sleep(self.interval_s)

    def _tick(self) -> list[tuple[Apply, Any]]:
        news = []
        try:
            with self.store.engine.begin() as db:
                db.execute(
                    nodes.update().where(nodes.c.name == self.name).values(seen_at=time.time())
                )
            for read, apply in self._watches:
                if (found := read()) is not None and apply is not None:
                    news.append((apply, found))
        except sa.exc.SQLAlchemyError as e:
            if not self._failing:  # once per outage, not twice a second
                log.error("The state database does not answer: %s", _first_line(e))
            self._failing = True
            return news
        if self._failing:
            log.info("The state database answers again.")
        self._failing = False
        self._read_at = time.monotonic()
        return news


def listed(store: StateStore) -> list[dict[str, Any]]:
    """Every node that joined this database, by name, as the control API shows them."""
    now = time.time()
    with store.engine.connect() as db:
        rows = db.execute(sa.select(nodes).order_by(nodes.c.name))
        return [
            {"name": row.name, "url": row.url, "started_at": int(row.started_at * 1000),
             "seen_at": int(row.seen_at * 1000), "alive": now - row.seen_at < ALIVE_S}
            for row in rows
        ]  # fmt: skip


class Counter:
    """Whether counter `name` of the state database (control/store.py) moved since last read."""

    def __init__(self, store: StateStore, name: str) -> None:
        self.store = store
        self.name = name
        self.seen = store.generation(name)

    def moved(self) -> int | None:
        """On a thread: the counter's new value, or None if it did not move."""
        now = self.store.generation(self.name)
        if now == self.seen:
            return None
        self.seen = now
        return now


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
