"""modelhost's state database on a real PostgreSQL server: migrated at start, once, whoever
starts first; a database an older modelhost made is upgraded, one a newer modelhost made is
refused with a message that says what to do."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from support import free_port

from modelhost import migrations
from modelhost.control.store import StateStore


def test_nodes_opening_a_new_database_together_migrate_it_once(postgres):
    url = postgres.database("together")
    opened: list[StateStore] = []
    failures: list[BaseException] = []

    def open_store(node: str) -> None:
        try:
            opened.append(StateStore(url, node))
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=open_store, args=(f"n{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert len(opened) == 4
    assert migrations.revision(opened[0].engine) == migrations.head()
    assert opened[0].enable("m") and not opened[3].enable("m")  # one table, seen by all
    for store in opened:
        store.engine.dispose()


def test_a_database_made_before_migrations_is_upgraded_and_keeps_what_it_held(postgres):
    url = postgres.database("older")
    engine = sa.create_engine(url)
    with engine.begin() as db:  # the serving and events tables of an older modelhost
        db.execute(
            sa.text(
                "CREATE TABLE serving (registered_model_name VARCHAR PRIMARY KEY, "
                "enabled_at FLOAT NOT NULL, env_manager VARCHAR)"
            )
        )
        db.execute(sa.text("INSERT INTO serving VALUES ('older', 1.0, 'uv')"))
        db.execute(
            sa.text(
                "CREATE TABLE events (id SERIAL PRIMARY KEY, timestamp FLOAT NOT NULL, "
                "registered_model_name VARCHAR NOT NULL, endpoint_version_name VARCHAR, "
                "message VARCHAR NOT NULL, actor VARCHAR)"
            )
        )
        db.execute(sa.text("INSERT INTO events (timestamp, registered_model_name, message) "
                           "VALUES (1.0, 'older', 'Serving enabled.')"))  # fmt: skip
    engine.dispose()
    store = StateStore(url, "node-a")
    assert migrations.revision(store.engine) == migrations.head()
    assert store.served() == {"older": {"env_manager": "uv"}}
    store.record("older", "Recorded after the upgrade.")
    shown = [(e["message"], e["node"]) for e in store.events("older")]
    assert shown == [("Recorded after the upgrade.", "node-a"), ("Serving enabled.", None)]
    store.engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_database_at_0002_gains_cluster_settings_and_keeps_its_rows(dialect, tmp_path, request):
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres").database("at_0002")
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(migrations.FOLDER))
    with engine.begin() as db:  # as the modelhost before cluster settings left it
        config.attributes["connection"] = db
        command.upgrade(config, "0002")
        db.execute(sa.text("INSERT INTO serving (registered_model_name, enabled_at, workers, tags) "
                           """VALUES ('older', 1.0, 2, '[["team", "fraud"]]')"""))  # fmt: skip
        db.execute(sa.text("INSERT INTO events (timestamp, registered_model_name, message) "
                           "VALUES (1.0, 'older', 'Serving turned on.')"))  # fmt: skip
    engine.dispose()
    store = StateStore(url, "node-a")
    assert migrations.revision(store.engine) == migrations.head()
    assert store.served() == {"older": {"workers": 2, "tags": (("team", "fraud"),)}}
    assert [e["message"] for e in store.events("older")] == ["Serving turned on."]
    cluster = {"cpus": 0.5, "memory_mb": 512, "min_replicas": 2, "max_replicas": 3}
    assert store.update("older", cluster)
    assert store.served()["older"] == {"workers": 2, "tags": (("team", "fraud"),), **cluster}
    store.engine.dispose()


def test_a_database_a_newer_modelhost_migrated_is_refused_with_a_message(postgres, tmp_path):
    url = postgres.database("newer")
    StateStore(url).engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    started = subprocess.run(
        [sys.executable, "-m", "modelhost", "up", "--home", str(tmp_path / "home"),
         "--port", str(free_port()), "--state-uri", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode != 0
    assert "Traceback" not in started.stderr, started.stderr
    assert "revision 9999, which a newer modelhost made" in started.stderr, started.stderr
    password = sa.engine.make_url(url).password
    assert not password or password not in started.stderr + started.stdout  # never in a log
