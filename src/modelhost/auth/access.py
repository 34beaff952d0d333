"""Who a credential is and what they may do, answered from memory on the scoring path.

The store lives in the gateway's process and tells this when anything changes, so a snapshot of
it, with what was worked out from it (header -> identity, identity and model -> level), answers
every request without a database query; a change drops it all. A change made on another node
moves the auth counter, which this node reads twice a second (`news`, control/node.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from modelhost.auth import tokens
from modelhost.auth.policy import EXPERIMENT, Level, covers, level_on
from modelhost.auth.store import AuthStore, Principal, Snapshot, TokenRecord

CACHE_LIMIT = 100_000  # entries per cache; past it, a cache starts again empty


@dataclass(frozen=True)
class _Known:
    """A snapshot and what was worked out from it, replaced whole: a check that began with one
    finishes with it, and what it caches goes into that one's caches, never a newer one's."""

    snapshot: Snapshot
    # header -> (principal, expires_at): skips parsing and hashing for a known header
    identities: dict[bytes, tuple[Principal, float | None]] = field(default_factory=dict)
    levels: dict[tuple[str, str], Level | None] = field(default_factory=dict)


class Access:
    def __init__(self, store: AuthStore, default_experiment: Level | None = Level.READ) -> None:
        self.store = store
        # What a caller may do on an experiment no grant of theirs names (MLflow's default).
        self.default_experiment = default_experiment
        self._known = _Known(store.snapshot())
        self._installing = threading.Lock()  # changes install from threads of their own
        store.on_change = self.reload

    @property
    def _snapshot(self) -> Snapshot:
        return self._known.snapshot

    def reload(self) -> None:
        self.install(self.store.snapshot())

    def news(self) -> Snapshot | None:
        """On a thread: the tables read again if the counter moved since the snapshot in use."""
        if self.store.generation() == self._snapshot.generation:
            return None
        return self.store.snapshot()

    def install(self, snapshot: Snapshot) -> None:
        """Answer from `snapshot` from now on, unless it is older than the one in use."""
        with self._installing:
            if snapshot.generation >= self._snapshot.generation:
                self._known = _Known(snapshot)

    def who(self, authorization: bytes) -> Principal | None:
        """The live principal an Authorization header's token belongs to, or None."""
        known = self._known
        found = known.identities.get(authorization)
        if found is None:
            found = self._verify(known.snapshot, authorization)
            if found is None:
                return None
            if len(known.identities) >= CACHE_LIMIT:
                known.identities.clear()
            known.identities[authorization] = found
        principal, expires_at = found
        if expires_at is not None and expires_at <= time.time():
            return None
        return principal

    def _verify(
        self, snapshot: Snapshot, authorization: bytes
    ) -> tuple[Principal, float | None] | None:
        found = tokens.credential(authorization)
        if found is None:
            return None
        secret, basic_user = found
        digest = tokens.token_hash(secret)
        record = snapshot.tokens.get(digest)
        if record is None or not tokens.same_hash(record.hash, digest):
            return None
        if basic_user not in (None, tokens.BASIC_USER, record.principal):
            return None
        principal = snapshot.principals.get(record.principal)
        return (principal, record.expires_at) if principal else None

    def token(self, secret: str) -> TokenRecord | None:
        """The live record of a token given as it is (a browser signing in), or None."""
        if self.who(f"Bearer {secret}".encode("latin-1", "replace")) is None:
            return None
        return self._snapshot.tokens.get(tokens.token_hash(secret))

    def holder(self, token_hash: str) -> Principal | None:
        """Who holds the live token with this hash (a browser session's), or None."""
        snapshot = self._snapshot
        record = snapshot.tokens.get(token_hash)
        if record is None or (record.expires_at is not None and record.expires_at <= time.time()):
            return None
        return snapshot.principals.get(record.principal)

    def level(self, principal: Principal, target: str) -> Level | None:
        """What `principal` may do on a registered model, a prefix of names or an experiment."""
        if principal.admin:
            return Level.MANAGE
        known = self._known
        key = (principal.name, target)
        try:
            return known.levels[key]
        except KeyError:
            pass
        if len(known.levels) >= CACHE_LIMIT:
            known.levels.clear()
        granted = known.snapshot.grants.get(principal.name, {})
        if target.startswith(EXPERIMENT):  # prefix grants are on model names only
            found = granted.get(target, self.default_experiment)
        else:
            found = level_on(granted, target)
        known.levels[key] = found
        return found

    def allows(self, principal: Principal, target: str, needed: Level) -> bool:
        found = self.level(principal, target)
        return found is not None and found >= needed

    def may_create(self, principal: Principal, name: str) -> bool:
        """A model in no one's namespace (no grant covers its name) anyone may create; one in a
        namespace needs EDIT there, as creating a model in a schema needs rights on it."""
        if self.allows(principal, name, Level.EDIT):
            return True
        return not any(covers(target, name) for target in self._snapshot.targets)

    def principal(self, name: str) -> Principal | None:
        return self._snapshot.principals.get(name)
