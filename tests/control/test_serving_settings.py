"""Serving settings: checked in one place, with messages that say what each may be."""

from __future__ import annotations

import pytest

from modelhost.control.settings import (
    Runtime,
    ServingSettings,
    changes,
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
        "scale_to_zero_after": 300,
        "tags": [{"key": "team", "value": "fraud"}, {"key": "tier", "value": ""}],
    }
    assert parse(given) == {
        "env_manager": "uv",
        "workers": 2,
        "max_batch_size": 64,
        "max_batch_delay_ms": 0.0,
        "timeout_s": 1.5,
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
