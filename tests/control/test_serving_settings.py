"""Serving settings: checked in one place, with messages that say what each may be."""

from __future__ import annotations

import pytest

from modelhost.control.settings import (
    Runtime,
    Scale,
    ServingSettings,
    changes,
    check,
    parse,
    platform_defaults,
)
from modelhost.errors import InvalidInput


def test_every_setting_is_taken_as_given():
    given = {
        "registered_model_name": "m",
        "env_manager": "uv",
        "workers": 2,
        "max_batch_size": 64.0,  # a JavaScript number
        "max_batch_delay_ms": 0,
        "timeout_s": 1.5,
        "cpus": 0.5,
        "memory_mb": 512.0,  # a JavaScript number
        "min_replicas": 2,
        "max_replicas": 3,
        "scale_to_zero_after": 300,
        "tags": [{"key": "team", "value": "fraud"}, {"key": "tier", "value": ""}],
    }
    assert parse(given) == {
        "env_manager": "uv",
        "workers": 2,
        "max_batch_size": 64,
        "max_batch_delay_ms": 0.0,
        "timeout_s": 1.5,
        "cpus": 0.5,
        "memory_mb": 512,
        "min_replicas": 2,
        "max_replicas": 3,
        "scale_to_zero_after": 300.0,
        "tags": (("team", "fraud"), ("tier", "")),
    }
    assert parse({"workers": 3}) == {"workers": 3}  # only what is given


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"workers": 0}, "workers must be a whole number of worker processes from 1 to 16"),
        ({"workers": 1.5}, "workers must be a whole number"),
        ({"workers": True}, "workers must be a whole number"),
        ({"workers": "2"}, "not '2'"),
        ({"max_batch_size": 100_001}, "max_batch_size must be a whole number of rows per "),
        ({"max_batch_delay_ms": -1}, "from 0 to 10000"),
        ({"timeout_s": 0}, "timeout_s must be a number of seconds above 0 and at most 86400"),
        (
            {"scale_to_zero_after": 0.5},
            "scale_to_zero_after must be a number of seconds from 1 to 2592000 (how long a "
            "model may go without requests before its servers stop; the next request wakes "
            "it), or null to keep it awake, not 0.5.",
        ),
        ({"scale_to_zero_after": 3e6}, "from 1 to 2592000"),
        ({"scale_to_zero_after": "60"}, "or null to keep it awake, not '60'"),
        ({"scale_to_zero_after": False}, "scale_to_zero_after must be a number of seconds"),
        ({"env_manager": "conda"}, "env_manager must be one of auto, local, uv"),
        ({"tags": {"team": "fraud"}}, 'tags must be a list of {"key": "<name>"'),
        ({"tags": [{"key": ""}]}, "A tag's key must be text of 1 to 250 characters"),
        ({"tags": [{"key": "a", "value": 1}]}, "The value of tag 'a' must be text"),
        ({"tags": [{"key": "a"}, {"key": "a"}]}, "Tag 'a' is given twice"),
        ({"worker": 2}, "Unknown setting 'worker'; the settings are env_manager, workers"),
        (
            {"cpus": 0.05},
            "cpus must be a number of logical CPUs from 0.1 to 256 (what each replica reserves "
            "on a cluster node), not 0.05.",
        ),
        ({"cpus": 257}, "from 0.1 to 256"),
        ({"cpus": "2"}, "cpus must be a number of logical CPUs"),
        ({"cpus": True}, "cpus must be a number of logical CPUs"),
        (
            {"memory_mb": -1},
            "memory_mb must be a whole number of MB each replica reserves on a cluster node "
            "(0: none) from 0 to 4194304, not -1.",
        ),
        ({"memory_mb": 4_194_305}, "from 0 to 4194304"),
        ({"memory_mb": 0.5}, "memory_mb must be a whole number"),
        (
            {"min_replicas": 0},
            "min_replicas must be a whole number of replicas of the model's server from 1 to 64",
        ),
        ({"max_replicas": 65}, "max_replicas must be a whole number of replicas"),
        ({"max_replicas": None}, "max_replicas must be a whole number"),
    ],
)
def test_a_bad_setting_says_what_it_may_be(given, said):
    with pytest.raises(InvalidInput) as refused:
        parse(given)
    assert said in refused.value.message


def test_a_model_sets_some_and_the_platform_the_rest():
    defaults = platform_defaults("local", timeout_s=30)
    assert defaults == ServingSettings("local", Runtime(timeout_s=30))
    mine = defaults.with_set({"workers": 2, "tags": (("team", "fraud"),)})
    assert mine.to_json() == {
        "env_manager": "local",
        "workers": 2,
        "max_batch_size": Runtime().max_batch_size,
        "max_batch_delay_ms": Runtime().max_batch_delay_ms,
        "timeout_s": 30,
        "cpus": 1,
        "memory_mb": 0,
        "min_replicas": 1,
        "max_replicas": 1,
        "scale_to_zero_after": None,
        "tags": [{"key": "team", "value": "fraud"}],
    }
    assert changes(defaults, mine) == ["workers 1 → 2", "tags {} → {team=fraud}"]
    assert changes(mine, mine) == []


def test_scale_to_zero_after_is_off_by_default_and_null_turns_it_off():
    defaults = platform_defaults("auto", timeout_s=60)
    assert defaults.scale_to_zero_after is None
    assert parse({"scale_to_zero_after": None}) == {"scale_to_zero_after": None}
    sleepy = defaults.with_set(parse({"scale_to_zero_after": 90}))
    assert sleepy.to_json()["scale_to_zero_after"] == 90
    assert sleepy.runtime == defaults.runtime  # it starts no new model server
    assert changes(defaults, sleepy) == ["scale_to_zero_after off → 90 s"]
    awake = sleepy.with_set(parse({"scale_to_zero_after": None}))
    assert awake.scale_to_zero_after is None
    assert changes(sleepy, awake) == ["scale_to_zero_after 90 s → off"]


def test_cpus_and_memory_are_the_runtime_and_replicas_are_the_scale():
    defaults = platform_defaults("auto", timeout_s=60)
    placed = defaults.with_set(parse({"cpus": 2, "memory_mb": 512}))
    assert placed.runtime == Runtime(timeout_s=60, cpus=2.0, memory_mb=512)  # new servers
    assert placed.scale == Scale()
    assert changes(defaults, placed) == ["cpus 1 → 2", "memory_mb 0 → 512"]
    # Not `modelhost worker` flags: where a server runs is no concern of the server.
    assert placed.runtime.worker_options() == defaults.runtime.worker_options()
    scaled = placed.with_set(parse({"min_replicas": 2, "max_replicas": 4}))
    assert scaled.scale == Scale(min_replicas=2, max_replicas=4)
    assert scaled.runtime == placed.runtime  # replicas added or removed, no new server
    assert changes(placed, scaled) == ["min_replicas 1 → 2", "max_replicas 1 → 4"]
    assert scaled.to_json()["cpus"] == 2 and placed.with_set({"cpus": 0.5}).to_json()["cpus"] == 0.5


def test_max_replicas_below_min_replicas_names_both_and_says_to_set_both():
    scaled = platform_defaults("auto", 60).with_set({"min_replicas": 3, "max_replicas": 5})
    given = parse({"max_replicas": 2})
    with pytest.raises(InvalidInput) as refused:
        check(scaled.with_set(given), given, "ray")
    assert refused.value.message == (
        "max_replicas 2 is below min_replicas 3; set both in one request, with max_replicas "
        "at least min_replicas."
    )
    both = parse({"min_replicas": 1, "max_replicas": 2})
    check(scaled.with_set(both), both, "ray")  # no error: both set together
    check(scaled.with_set({"max_replicas": 3}), {"max_replicas": 3}, "ray")  # equal is fine


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"cpus": 1}, "cpus"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"min_replicas": 2, "max_replicas": 2}, "min_replicas, max_replicas"),
        ({"max_replicas": 3, "workers": 2}, "max_replicas"),
    ],
)
def test_the_local_engine_refuses_what_places_replicas_on_a_cluster(given, named):
    defaults = platform_defaults("auto", 60)
    with pytest.raises(InvalidInput) as refused:
        check(defaults.with_set(parse(given)), parse(given), "local")
    assert refused.value.message == (
        f"This request sets {named}, which place replicas on a Ray cluster; this modelhost "
        "runs its model servers locally. Start modelhost with `--engine ray --ray-address "
        "ADDRESS` to use them; locally, `workers` is what adds processes."
    )
    check(defaults.with_set(parse(given)), parse(given), "ray")  # a cluster takes them


def test_the_local_engine_takes_one_replica_and_every_other_setting():
    given = parse({"min_replicas": 1, "max_replicas": 1, "workers": 4, "tags": []})
    check(platform_defaults("auto", 60).with_set(given), given, "local")
