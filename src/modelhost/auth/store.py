"""Users, service principals, their tokens and their grants, in modelhost's state database."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from modelhost.auth import tokens
from modelhost.auth.policy import Level, check_target
from modelhost.control.store import AUTH, generation, moved
from modelhost.errors import Conflict, InvalidInput, NotFound

metadata = sa.MetaData()

principals = sa.Table(
    "principals",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

token_rows = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("principal", sa.String, sa.ForeignKey("principals.name"), nullable=False),
    sa.Column("hash", sa.String, nullable=False, unique=True),
    sa.Column("comment", sa.String, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("principal", sa.String, sa.ForeignKey("principals.name"), primary_key=True),
    sa.Column("target", sa.String, primary_key=True),
    sa.Column("level", sa.String, nullable=False),
    sa.Column("granted_by", sa.String, nullable=True),
    sa.Column("granted_at", sa.Float, nullable=False),
)

ADMIN = "admin"  # the first admin's name
ADMIN_ENV_TOKEN_ID = "admin-env"  # the token MODELHOST_ADMIN_TOKEN names, replaced when it changes


class Kind(StrEnum):
    USER = "user"
    SERVICE_PRINCIPAL = "service_principal"


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    admin: bool

    def shown(self) -> dict:
        return {"name": self.name, "kind": self.kind, "admin": self.admin}


@dataclass(frozen=True)
class TokenRecord:
    id: str
    principal: str
    hash: str
    expires_at: float | None


@dataclass(frozen=True)
class Snapshot:
    """Everything a request is checked against, read at once; the gateway keeps it in memory."""

    principals: dict[str, Principal]  # active ones, by name
    tokens: dict[str, TokenRecord]  # live ones (not revoked), by hash
    grants: dict[str, dict[str, Level]]  # principal -> target -> level
    targets: frozenset[str]  # every granted target, of anyone
    generation: int  # the auth counter when it was read: it is at least this new


class AuthStore:
    """Every change goes through here; `on_change` is called after each (to drop caches)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.on_change = lambda: None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[sa.Connection]:
        """A transaction that changes who may do what: other nodes learn of it by the counter."""
        with self.engine.begin() as db:
            yield db
            moved(db, AUTH)
        self.on_change()

    def generation(self) -> int:
        """The counter's value now: when it moves, something changed (on any node)."""
        with self.engine.connect() as db:
            return generation(db, AUTH)

    def snapshot(self) -> Snapshot:
        with self.engine.connect() as db:
            counted = generation(db, AUTH)
            active = {
                row.name: Principal(row.name, row.kind, row.admin)
                for row in db.execute(
                    sa.select(principals).where(principals.c.revoked_at.is_(None))
                )
            }
            live = {
                row.hash: TokenRecord(row.id, row.principal, row.hash, row.expires_at)
                for row in db.execute(
                    sa.select(token_rows).where(token_rows.c.revoked_at.is_(None))
                )
                if row.principal in active
            }
            granted: dict[str, dict[str, Level]] = {}
            targets = set()
            for row in db.execute(sa.select(grants)):
                targets.add(row.target)
                if row.principal in active:
                    granted.setdefault(row.principal, {})[row.target] = Level[row.level]
        return Snapshot(active, live, granted, frozenset(targets), counted)

    # --- identities

    def create_principal(self, name: str, kind: str = Kind.USER, admin: bool = False) -> Principal:
        if not name or name != name.strip() or ":" in name:
            raise InvalidInput(f"A user name needs characters and no ':' or edge spaces: {name!r}.")
        with self._changing() as db:
            if db.execute(sa.select(principals).where(principals.c.name == name)).first():
                raise Conflict(f"'{name}' exists already (names of revoked ones are not reused).")
            db.execute(
                principals.insert().values(
                    name=name, kind=Kind(kind).value, admin=admin, created_at=time.time()
                )
            )
        return Principal(name, Kind(kind).value, admin)

    def list_principals(self) -> list[dict]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(principals).order_by(principals.c.created_at))
            return [
                {"name": r.name, "kind": r.kind, "admin": r.admin, "active": r.revoked_at is None}
                for r in rows
            ]

    def revoke_principal(self, name: str) -> None:
        """Its tokens stop working at once; its grants stay, for the record, but do nothing."""
        snapshot = self.snapshot()
        if name not in snapshot.principals:
            raise NotFound(f"No active user or service principal '{name}'.")
        admins = [p for p in snapshot.principals.values() if p.admin]
        if snapshot.principals[name].admin and len(admins) == 1:
            raise InvalidInput(f"'{name}' is the last admin: make another admin first.")
        with self._changing() as db:
            db.execute(
                principals.update().where(principals.c.name == name).values(revoked_at=time.time())
            )

    # --- tokens

    def create_token(
        self, principal: str, expires_in_s: float | None = None, comment: str = ""
    ) -> tuple[str, dict]:
        """A new token for `principal`: the secret (shown once) and what is kept about it."""
        if principal not in self.snapshot().principals:
            raise NotFound(f"No active user or service principal '{principal}'.")
        if expires_in_s is not None and expires_in_s <= 0:
            raise InvalidInput("A token's lifetime must be positive.")
        secret = tokens.new_token()
        now = time.time()
        row = {
            "id": tokens.new_token_id(),
            "principal": principal,
            "comment": comment,
            "created_at": now,
            "expires_at": now + expires_in_s if expires_in_s else None,
        }
        with self._changing() as db:
            db.execute(token_rows.insert().values(hash=tokens.token_hash(secret), **row))
        return secret, _shown_token(row)

    def set_token(self, principal: str, token_id: str, secret: str) -> None:
        """Make `secret` the token `token_id` of `principal` (MODELHOST_ADMIN_TOKEN)."""
        digest = tokens.token_hash(secret)
        with self._changing() as db:
            db.execute(token_rows.delete().where(token_rows.c.id == token_id))
            db.execute(token_rows.delete().where(token_rows.c.hash == digest))
            db.execute(
                token_rows.insert().values(
                    id=token_id, principal=principal, hash=digest, comment="MODELHOST_ADMIN_TOKEN",
                    created_at=time.time(),
                )
            )  # fmt: skip

    def list_tokens(self, principal: str | None = None) -> list[dict]:
        query = sa.select(token_rows).where(token_rows.c.revoked_at.is_(None))
        if principal is not None:
            query = query.where(token_rows.c.principal == principal)
        with self.engine.connect() as db:
            return [_shown_token(row._asdict()) for row in db.execute(query)]

    def token_owner(self, token_id: str) -> str:
        with self.engine.connect() as db:
            row = db.execute(
                sa.select(token_rows.c.principal).where(
                    token_rows.c.id == token_id, token_rows.c.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            raise NotFound(f"No live token '{token_id}'.")
        return row[0]

    def revoke_token(self, token_id: str) -> None:
        self.token_owner(token_id)
        with self._changing() as db:
            db.execute(
                token_rows.update()
                .where(token_rows.c.id == token_id)
                .values(revoked_at=time.time())
            )

    # --- grants

    def grant(self, principal: str, target: str, level: Level, by: str | None) -> None:
        check = _checked(check_target, target)
        if principal not in self.snapshot().principals:
            raise NotFound(f"No active user or service principal '{principal}'.")
        with self._changing() as db:
            db.execute(
                grants.delete().where(grants.c.principal == principal, grants.c.target == check)
            )
            db.execute(
                grants.insert().values(
                    principal=principal, target=check, level=level.name, granted_by=by,
                    granted_at=time.time(),
                )
            )  # fmt: skip

    def revoke(self, principal: str, target: str) -> bool:
        """False if there was no such grant."""
        with self._changing() as db:
            gone = db.execute(
                grants.delete().where(grants.c.principal == principal, grants.c.target == target)
            ).rowcount
        return gone > 0

    def list_grants(self, principal: str | None = None) -> list[dict]:
        query = sa.select(grants).order_by(grants.c.target, grants.c.principal)
        if principal is not None:
            query = query.where(grants.c.principal == principal)
        with self.engine.connect() as db:
            return [
                {"target": r.target, "user": r.principal, "level": r.level,
                 "granted_by": r.granted_by}
                for r in db.execute(query)
            ]  # fmt: skip

    def move_grants(self, old: str, new: str) -> None:
        """A renamed model keeps its grants (those on its exact name)."""
        with self._changing() as db:
            db.execute(grants.delete().where(grants.c.target == new))
            db.execute(grants.update().where(grants.c.target == old).values(target=new))

    def drop_grants(self, target: str) -> None:
        """A deleted model's grants go with it: a new model of the same name starts clean."""
        with self._changing() as db:
            db.execute(grants.delete().where(grants.c.target == target))


def _shown_token(row: dict) -> dict:
    return {
        "id": row["id"],
        "user": row["principal"],
        "comment": row.get("comment") or "",
        "created_at": int(row["created_at"] * 1000),
        "expires_at": int(row["expires_at"] * 1000) if row.get("expires_at") else None,
    }


def _checked(check, value):
    try:
        return check(value)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
