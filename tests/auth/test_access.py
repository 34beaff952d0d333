"""Tokens, grants and what they allow, checked against a real state database in a temp folder."""

from __future__ import annotations

import base64
import time

import pytest
import sqlalchemy as sa

from modelhost.auth import tokens
from modelhost.auth.access import Access
from modelhost.auth.limits import FailureLimiter
from modelhost.auth.policy import (
    ADMIN_ONLY,
    Level,
    check_model_name,
    check_target,
    covers,
    level_on,
    parse_default_permission,
    registry_rule,
    serving_rule,
)
from modelhost.auth.setup import bootstrap_admin
from modelhost.auth.store import AuthStore, token_rows
from modelhost.config import UpSettings
from modelhost.control.store import StateStore
from modelhost.errors import Conflict, InvalidInput
from modelhost.gateway.paths import registry_route
from modelhost.preflight import SetupError, auth_required


@pytest.fixture
def store(tmp_path) -> AuthStore:
    return AuthStore(StateStore(f"sqlite:///{tmp_path / 'state.db'}").engine)


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_prefix_grants_cover_names_and_narrower_prefixes():
    assert covers("prod.ml_team.*", "prod.ml_team.iris")
    assert covers("prod.*", "prod.ml_team.*")
    assert covers("*", "anything at all")
    assert covers("prod.ml_team.iris", "prod.ml_team.iris")
    assert not covers("prod.ml_team.*", "prod.ml_teams.iris")
    assert not covers("prod.ml_team.*", "prod.*")
    assert not covers("prod.ml_team.iris", "prod.ml_team.iris2")
    grants = {"prod.*": Level.READ, "prod.ml_team.iris": Level.MANAGE}
    assert level_on(grants, "prod.ml_team.iris") is Level.MANAGE
    assert level_on(grants, "prod.other") is Level.READ
    assert level_on(grants, "dev.x") is None
    for bad in ("", "a*b", "**"):
        with pytest.raises(ValueError, match="prefix ending in"):
            check_target(bad)


def rule_for(method: str, path: str):
    return registry_rule(method, *registry_route(path))


def test_routes_map_to_the_level_they_need_on_the_model_they_name():
    rule = rule_for("POST", "/api/2.0/mlflow/model-versions/create")
    assert (rule.level, rule.field) == (Level.EDIT, "name")
    assert rule_for("GET", "/ajax-api/2.0/mlflow/registered-models/get").level is Level.READ
    assert rule_for("DELETE", "/api/2.0/mlflow/registered-models/delete").level is Level.MANAGE
    assert rule_for("POST", "/api/2.0/mlflow/registered-models/create").create
    assert rule_for("GET", "/api/2.0/mlflow/registered-models/search").filter_key
    assert serving_rule("POST", "enable").level is Level.MANAGE
    assert serving_rule("GET", "logs").level is Level.MANAGE
    assert serving_rule("GET", "events").level is Level.READ
    assert serving_rule("PUT", "config").level is Level.MANAGE  # settings to come: MANAGE


def test_routes_the_policy_does_not_know_are_for_admins_only():
    # Tracking follows experiments, files too, route by route.
    created = rule_for("POST", "/api/2.0/mlflow/runs/create")
    assert (created.experiment, created.locate) == (Level.EDIT, "experiment_id")
    assert rule_for("POST", "/api/2.0/mlflow/runs/delete").experiment is Level.MANAGE
    assert rule_for("POST", "/api/2.0/mlflow/experiments/create").after == "experiment"
    files = rule_for("GET", "/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files")
    assert (files.experiment, files.locate) == (Level.READ, "logged_model")
    assert rule_for("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/x").experiment is Level.EDIT
    assert rule_for("DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/x").experiment is Level.MANAGE
    upload = rule_for("POST", "/api/2.0/mlflow-artifacts/mpu/create/1/r/artifacts/f")
    assert (upload.experiment, upload.locate) == (Level.EDIT, "path")
    for method, path in [
        ("POST", "/api/2.0/mlflow/registered-models/new-thing"),
        ("POST", "/api/2.0/mlflow/webhooks"),
        ("GET", "/api/2.0/mlflow/webhooks/w-1"),
        ("HEAD", "/api/2.0/mlflow/registered-models/get"),  # Flask would answer it as a GET
        ("OPTIONS", "/api/2.0/mlflow/runs/get"),
        ("GET", "/api/2.0/mlflow/runs/get/"),
        ("GET", "/api/2.0/mlflow/logged-models//params"),
        ("POST", "/api/2.0/mlflow/runs/create-promptlab-run"),
        ("GET", "/api/3.0/mlflow/gateway/secrets/list"),
        ("POST", "/ajax-api/3.0/mlflow/workspaces"),
        ("GET", "/api/2.0/mlflow-artifacts/presigned/1/x"),
        ("POST", "/api/2.0/mlflow-artifacts/artifacts/1/x"),
        ("GET", "/api/2.0/mlflow-artifacts/mpu/create/1/x"),
    ]:
        assert rule_for(method, path) is ADMIN_ONLY, (method, path)


def test_names_that_grants_would_read_as_a_prefix_are_refused():
    for name in ("team.*", "*", "a*b"):
        with pytest.raises(InvalidInput, match="cannot contain"):
            check_model_name(name)
    check_model_name("prod.ml_team.iris")


def test_tokens_are_stored_hashed_and_accepted_as_bearer_or_basic(store):
    access = Access(store)
    store.create_principal("alice")
    secret, shown = store.create_token("alice", comment="laptop")
    assert secret.startswith(tokens.PREFIX) and len(secret) > 40
    with store.engine.connect() as db:
        stored = db.execute(sa.select(token_rows.c.hash)).scalars().all()
    assert stored == [tokens.token_hash(secret)]  # never the token itself
    assert access.who(bearer(secret)).name == "alice"
    assert access.who(basic("token", secret)).name == "alice"
    assert access.who(basic("alice", secret)).name == "alice"
    assert access.who(basic("bob", secret)) is None
    assert access.who(bearer(secret + "x")) is None
    assert access.who(b"Bearer ") is None
    assert access.who(b"Basic !!!") is None
    assert store.list_tokens("alice") == [shown]
    store.revoke_token(shown["id"])
    assert access.who(bearer(secret)) is None  # the cached identity went with the change


def test_expired_tokens_and_revoked_users_are_refused(store):
    access = Access(store)
    store.create_principal("svc", kind="service_principal")
    secret, shown = store.create_token("svc", expires_in_s=3600)
    assert access.who(bearer(secret)).kind == "service_principal"
    with store.engine.begin() as db:
        db.execute(
            token_rows.update().where(token_rows.c.id == shown["id"]).values(expires_at=time.time())
        )
    access.reload()
    assert access.who(bearer(secret)) is None
    other, _ = store.create_token("svc")
    assert access.who(bearer(other)) is not None
    store.revoke_principal("svc")
    assert access.who(bearer(other)) is None
    with pytest.raises(Conflict):
        store.create_principal("svc")
    with pytest.raises(InvalidInput):
        store.create_principal("has:colon")


def test_levels_follow_grants_and_changes_apply_at_once(store):
    access = Access(store)
    alice = store.create_principal("alice")
    boss = store.create_principal("boss", admin=True)
    assert access.level(alice, "prod.ml_team.iris") is None
    assert access.level(boss, "anything") is Level.MANAGE
    store.grant("alice", "prod.ml_team.*", Level.READ, by="boss")
    assert access.allows(alice, "prod.ml_team.iris", Level.READ)
    assert not access.allows(alice, "prod.ml_team.iris", Level.EDIT)
    store.grant("alice", "prod.ml_team.iris", Level.EDIT, by="boss")
    assert access.level(alice, "prod.ml_team.iris") is Level.EDIT
    assert access.level(alice, "prod.ml_team.other") is Level.READ
    # Creating: free in no one's namespace, EDIT needed in a claimed one.
    assert access.may_create(alice, "sandbox.mine")
    assert access.may_create(boss, "prod.ml_team.new")
    store.create_principal("carol")
    carol = access.principal("carol")
    assert not access.may_create(carol, "prod.ml_team.new")
    assert access.may_create(alice, "prod.ml_team.iris")
    store.revoke("alice", "prod.ml_team.iris")
    assert access.level(alice, "prod.ml_team.iris") is Level.READ
    store.move_grants("prod.ml_team.iris", "prod.ml_team.renamed")
    store.drop_grants("prod.ml_team.*")
    assert access.level(alice, "prod.ml_team.iris") is None


def test_the_first_admin_comes_from_the_variable_or_is_made_once(store, tmp_path):
    printed = bootstrap_admin(store, None)
    assert printed is not None
    access = Access(store)
    assert access.who(bearer(printed)).admin
    assert bootstrap_admin(store, None) is None  # made once, shown once
    chosen = "c" * 40
    assert bootstrap_admin(store, chosen) is None
    access.reload()
    assert access.who(bearer(chosen)).name == "admin"
    changed = "d" * 40
    bootstrap_admin(store, changed)
    access.reload()
    assert access.who(bearer(chosen)) is None  # the variable's token was replaced
    assert access.who(bearer(changed)).admin
    with pytest.raises(SetupError, match="shorter than 32"):
        bootstrap_admin(store, "short")
    with pytest.raises(InvalidInput, match="last admin"):
        store.revoke_principal("admin")


def test_open_only_on_loopback_unless_insecure(tmp_path):
    def required(**options) -> bool:
        return auth_required(UpSettings(home=tmp_path, **options))

    assert not required(host="127.0.0.1")
    assert not required(host="::1")
    assert not required(host="localhost")
    assert required(host="127.0.0.1", auth=True)
    assert required(host="0.0.0.0")
    assert required(host="myhost.example")
    assert not required(host="0.0.0.0", insecure=True)
    with pytest.raises(SetupError, match="contradict"):
        required(auth=True, insecure=True)


def test_failures_beyond_a_burst_wait():
    limiter = FailureLimiter(burst=3, per_s=1.0)
    assert [limiter.failed("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.failed("10.0.0.1") > 0
    assert limiter.failed("10.0.0.2") == 0.0  # another address has its own allowance


def test_experiments_follow_their_own_grants_and_the_default(store):
    access = Access(store, default_experiment=Level.READ)
    alice = store.create_principal("alice")
    store.grant("alice", "*", Level.MANAGE, by=None)  # every registered model...
    assert access.level(alice, "experiment:1") is Level.READ  # ...says nothing of experiments
    store.grant("alice", "experiment:1", Level.EDIT, by=None)
    assert access.level(alice, "experiment:1") is Level.EDIT
    assert access.level(alice, "experiment:2") is Level.READ
    closed = Access(store, default_experiment=parse_default_permission("no_permissions"))
    assert closed.level(alice, "experiment:2") is None
    assert closed.level(alice, "experiment:1") is Level.EDIT
    with pytest.raises(InvalidInput, match="experiment by its id"):
        store.grant("alice", "experiment:one", Level.READ, by=None)
    with pytest.raises(ValueError, match="NO_PERMISSIONS"):
        parse_default_permission("WRITE")
