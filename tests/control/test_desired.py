"""Reading what should be served from a real MLflow registry: a few searches for all served
models, with the same answer a model at a time would give."""

from __future__ import annotations

import warnings

import pytest
from mlflow import MlflowClient
from support import Registry

from modelhost.control import desired
from modelhost.control.desired import DesiredReader
from modelhost.control.settings import Runtime, Scale, platform_defaults
from modelhost.control.store import StateStore

QUOTED = 'it\'s "quoted", (with) a\\backslash'
PLAIN = "plain"
UNSAYABLE = "ends with a backslash\\"  # MLflow's filter parser cannot end a string with it


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        client = MlflowClient(tracking_uri=running.url, registry_uri=running.url)
        for name in (QUOTED, PLAIN, UNSAYABLE, "not served"):
            client.create_registered_model(name)
            for _ in range(3):
                client.create_model_version(name, "s3://models/toy")  # never fetched: only read
        with warnings.catch_warnings():  # stages are deprecated in MLflow, yet still in use
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(QUOTED, "1", "Archived")
            client.transition_model_version_stage(QUOTED, "2", "Production")
        client.set_registered_model_alias(QUOTED, "champion", "3")
        client.set_registered_model_alias(QUOTED, "retired", "1")  # its version is archived
        client.set_registered_model_alias(PLAIN, "champion", "1")
        yield running


def reader(registry: Registry, tmp_path, *served: str) -> DesiredReader:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    for name in served:
        store.enable(name)
    return DesiredReader(store, registry.url, platform_defaults("local", 60), lambda: None)


def test_every_served_model_is_read_with_its_versions_stages_and_aliases(registry, tmp_path):
    read = reader(registry, tmp_path, QUOTED, PLAIN).read()

    assert set(read) == {QUOTED, PLAIN}  # a model not served is not read
    assert dict(read[QUOTED].versions) == {"2": "Production", "3": "None"}
    assert dict(read[QUOTED].aliases) == {"champion": "3"}
    assert set(read[QUOTED].identities) == {"2", "3"}
    assert dict(read[PLAIN].versions) == {"1": "None", "2": "None", "3": "None"}
    assert dict(read[PLAIN].aliases) == {"champion": "1"}
    assert all(m.env_manager == "local" for m in read.values())


def test_a_models_cluster_settings_reach_its_desired_model(registry, tmp_path):
    read = reader(registry, tmp_path, QUOTED, PLAIN)
    read.store.update(PLAIN, {"cpus": 2.0, "memory_mb": 512, "min_replicas": 2, "max_replicas": 4})
    desired = read.read()
    assert desired[PLAIN].scale == Scale(min_replicas=2, max_replicas=4)
    assert (desired[PLAIN].runtime.cpus, desired[PLAIN].runtime.memory_mb) == (2.0, 512)
    assert desired[QUOTED].scale == Scale()  # what a model that sets none runs with
    assert desired[QUOTED].runtime == Runtime(timeout_s=60)


def test_names_read_in_many_searches_and_pages_read_the_same(registry, tmp_path, monkeypatch):
    at_once = reader(registry, tmp_path, QUOTED, PLAIN).read()
    monkeypatch.setattr(desired, "FILTER_CHARS", 1)  # one name a search
    monkeypatch.setattr(desired, "MODELS_PER_PAGE", 1)
    monkeypatch.setattr(desired, "VERSIONS_PER_PAGE", 1)

    assert reader(registry, tmp_path, QUOTED, PLAIN).read() == at_once


def test_a_name_the_registry_cannot_search_for_leaves_the_others_read(registry, tmp_path):
    read = reader(registry, tmp_path, PLAIN, UNSAYABLE).read()

    assert dict(read[PLAIN].versions) == {"1": "None", "2": "None", "3": "None"}
    assert read[UNSAYABLE].versions is None  # not read: nothing of it is served yet


def test_what_could_not_be_read_keeps_its_last_known_value(registry, tmp_path):
    served = reader(registry, tmp_path, PLAIN, "not served")
    first = served.read()
    served.latest = first
    client = MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)
    client.delete_registered_model("not served")  # gone from the registry meanwhile

    again = served.read()
    assert again["not served"] == first["not served"]
    assert dict(again["not served"].versions) == {"1": "None", "2": "None", "3": "None"}
    assert again[PLAIN] == first[PLAIN]
