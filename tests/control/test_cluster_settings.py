"""Cluster settings through the serving-control interface on a platform whose engine is Ray:
checked against what the model had, kept in the state store, shown, and said in its events.

The serving control is the real one over a real state database; no registry is reached (the
model is turned on in the store, as `enable` would after asking the registry) and no cluster is
needed to take the settings: placing replicas is the engine's work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from modelhost.control.routes import RouteBoard
from modelhost.control.serving import ServingControl
from modelhost.control.settings import platform_defaults
from modelhost.control.store import StateStore
from modelhost.errors import InvalidInput

MODEL = "fraud"
CLUSTER = ("cpus", "memory_mb", "min_replicas", "max_replicas")


@pytest.fixture
def control(tmp_path) -> Iterator[ServingControl]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    assert store.enable(MODEL)
    control = ServingControl(
        store, "http://127.0.0.1:9", platform_defaults("auto", timeout_s=60), RouteBoard(),
        lambda: None, lambda _: tmp_path, engine="ray",
    )  # fmt: skip
    yield control
    store.engine.dispose()


def shown(control: ServingControl) -> dict:
    return asyncio.run(control.must_be_served(MODEL)).to_json()


def test_cluster_settings_are_kept_shown_and_said_in_an_event(control):
    assert [shown(control)[k] for k in CLUSTER] == [1, 0, 1, 1]  # the defaults
    settings = {"cpus": 2.0, "memory_mb": 512, "min_replicas": 2, "max_replicas": 3}
    asyncio.run(control.update_settings(MODEL, settings, actor="ana"))
    assert control.store.served()[MODEL] == settings  # in the database, as set
    assert [shown(control)[k] for k in CLUSTER] == [2, 512, 2, 3]
    [event] = [e for e in control.store.events(MODEL) if e["message"].startswith("Settings")]
    assert event["message"] == (
        "Settings changed by ana: cpus 1 → 2; memory_mb 0 → 512; min_replicas 1 → 2; "
        "max_replicas 1 → 3."
    )
    assert event["user"] == "ana"


def test_max_replicas_below_what_the_model_has_as_min_is_refused_and_nothing_is_kept(control):
    asyncio.run(control.update_settings(MODEL, {"min_replicas": 3, "max_replicas": 4}, None))
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(control.update_settings(MODEL, {"max_replicas": 2}, None))
    assert refused.value.status == 400
    assert "max_replicas 2 is below min_replicas 3; set both in one request" in (
        refused.value.message
    )
    assert (shown(control)["min_replicas"], shown(control)["max_replicas"]) == (3, 4)
    asyncio.run(control.update_settings(MODEL, {"min_replicas": 1, "max_replicas": 2}, None))
    assert (shown(control)["min_replicas"], shown(control)["max_replicas"]) == (1, 2)


def test_the_local_engine_refuses_cluster_settings_and_keeps_none(control):
    control.engine = "local"
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(control.update_settings(MODEL, {"workers": 2, "min_replicas": 2}, None))
    assert "sets min_replicas, which place replicas on a Ray cluster" in refused.value.message
    assert control.store.served()[MODEL] == {}  # not even the workers
