"""Idle models sleep: their model servers stop, and the next request wakes them and is answered.

One platform (auth on) serves two registered models: one with `scale_to_zero_after`, one
without. The first is left idle until it sleeps, then woken by requests; the second is idle
just as long and stays up.
"""

from __future__ import annotations

import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pytest
from support import ONE_ROW, Platform, eventually, log_iris, model_servers, modelhost, signed_in_as

API = "/api/2.0/preview/mlflow/endpoints"
SLEEPY = "sleepy model"
AWAKE = "wakeful model"
AFTER_S = 5  # its scale_to_zero_after: long enough to look at it awake first
TIMEOUT_S = 60  # the platform's --timeout: how long a request may wait for a wake-up
WOKE = re.compile(r"^Woke up for a request in (\d+) ms\.$")


@pytest.fixture(scope="module")
def platform(tmp_path_factory, iris):
    home = tmp_path_factory.mktemp("sleep") / "home"
    with Platform(home, "--auth", "--timeout", str(TIMEOUT_S)) as platform:
        admin = re.findall(r"^\s+(mh_\S+)$", platform.log_path.read_text(), re.MULTILINE)[0]
        assert modelhost(platform.url, admin, "users", "create", "stranger").returncode == 0
        made = modelhost(platform.url, admin, "tokens", "create", "--user", "stranger")
        platform.admin = admin
        platform.headers = {
            "admin": {"Authorization": f"Bearer {admin}"},
            "stranger": {"Authorization": f"Bearer {made.stdout.strip()}"},
        }
        with signed_in_as(platform.url, admin) as registry:
            mlflow.set_experiment("sleep")
            assert log_iris(iris, SLEEPY) == "1"
            assert log_iris(iris, AWAKE) == "1"
            registry.set_registered_model_alias(SLEEPY, "champion", "1")
        enabled = modelhost(platform.url, admin, "serving", "enable", SLEEPY,
                            "--scale-to-zero-after", str(AFTER_S))  # fmt: skip
        assert enabled.returncode == 0, enabled.stderr
        assert call(platform, "enable", registered_model_name=AWAKE).status_code == 200
        yield platform


def call(platform, action: str, **fields) -> httpx.Response:
    """A serving API call as the admin: GET with a query, POST with a body."""
    headers = platform.headers["admin"]
    if action in ("enable", "disable", "update-settings"):
        return httpx.post(f"{platform.url}{API}/{action}", json=fields, headers=headers)
    return httpx.get(f"{platform.url}{API}/{action}", params=fields, headers=headers)


def score(platform, name: str, ref: str, who: str = "admin") -> httpx.Response:
    url = f"{platform.url}/model/{name}/{ref}/invocations"
    return httpx.post(url, json=ONE_ROW, headers=platform.headers[who], timeout=TIMEOUT_S * 2)


def answered(platform, name: str, ref: str = "1") -> httpx.Response:
    answer = score(platform, name, ref)
    assert answer.status_code == 200, answer.text
    return answer


def state(platform, name: str) -> str:
    return call(platform, "get-status", registered_model_name=name).json()["endpoint_status"][
        "state"
    ]


def events(platform, name: str) -> list[str]:
    return [
        e["message"] for e in call(platform, "events", registered_model_name=name).json()["events"]
    ]


def platform_pss_kb(platform) -> int:
    """The proportional memory of every process of the platform (`up` and all it started)."""
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if platform.marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                total += _rollup_kb(proc.name, "Pss")
        except OSError:  # gone meanwhile
            pass
    return total


def _rollup_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/smaps_rollup")


def asleep(platform, name: str) -> None:
    assert model_servers(platform, name) == []
    assert state(platform, name) == "ENDPOINT_STATE_SCALED_TO_ZERO"


def test_an_idle_model_sleeps_gives_its_memory_back_and_a_request_wakes_it(platform):
    expected = eventually(lambda: answered(platform, AWAKE), timeout_s=240).json()
    awake_since = time.monotonic()  # the model without the setting is idle from here
    answer = eventually(lambda: answered(platform, SLEEPY), timeout_s=240)
    assert answer.json() == expected  # the same model, trained alike
    # Awake: its server runs. Measured now, a moment after the answer, well within AFTER_S.
    servers = model_servers(platform, SLEEPY)
    awake_servers = model_servers(platform, AWAKE)
    assert servers and awake_servers
    private_kb = sum(_rollup_kb(pid, "Private_Clean") + _rollup_kb(pid, "Private_Dirty")
                     for pid in servers)  # fmt: skip
    pss_awake_kb = platform_pss_kb(platform)

    # Idle AFTER_S seconds: its model servers stop, its versions stay listed, and it says so.
    eventually(lambda: asleep(platform, SLEEPY), timeout_s=60)
    assert "Asleep after 5 s without requests; the next request wakes it." in events(
        platform, SLEEPY
    )
    status = call(platform, "get-status", registered_model_name=SLEEPY).json()["endpoint_status"]
    assert status["state_message"].startswith("Asleep")
    assert status["settings"]["scale_to_zero_after"] == AFTER_S
    versions = call(platform, "list-versions", registered_model_name=SLEEPY).json()
    assert [(v["endpoint_version_name"], v["state"], v["aliases"])
            for v in versions["endpoint_versions"]] == [
        ("1", "VERSION_STATE_SCALED_TO_ZERO", ["champion"])
    ]  # fmt: skip
    # Its memory is returned: the platform as a whole holds less by about its server's own.
    pss_asleep_kb = platform_pss_kb(platform)
    assert pss_asleep_kb < pss_awake_kb - private_kb / 2, (pss_awake_kb, pss_asleep_kb, private_kb)

    # The model without the setting, idle twice as long, stays up in the same processes.
    time.sleep(max(0.0, awake_since + 2 * AFTER_S - time.monotonic()))
    assert state(platform, AWAKE) == "ENDPOINT_STATE_READY"
    assert model_servers(platform, AWAKE) == awake_servers

    # A version it does not have is still 404, and a caller who may not read it gets 403:
    # neither wakes it.
    missing = score(platform, SLEEPY, "7")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert score(platform, SLEEPY, "champion", who="stranger").status_code == 403
    time.sleep(2)  # a wake-up would have started a model server by now
    asleep(platform, SLEEPY)

    # Requests that come together, by version and by alias, share one wake-up and are answered.
    refs = ["1", "champion", "1", "champion"]
    with ThreadPoolExecutor(len(refs)) as pool:
        answers = list(pool.map(lambda ref: score(platform, SLEEPY, ref), refs))
    for woken in answers:
        assert woken.status_code == 200, woken.text
        assert woken.json() == expected
        assert woken.headers["x-modelhost-version"] == "1"
        assert 0 < int(woken.headers["x-modelhost-cold-start-ms"]) <= TIMEOUT_S * 1000
    assert "x-modelhost-cold-start-ms" not in answered(platform, SLEEPY).headers  # awake now
    woke = eventually(lambda: _one_wake(platform), timeout_s=30)
    assert 0 < woke <= TIMEOUT_S * 1000
    now_serving = model_servers(platform, SLEEPY)
    assert now_serving and not set(now_serving) & set(servers)  # new processes
    assert state(platform, SLEEPY) == "ENDPOINT_STATE_READY"


def _one_wake(platform) -> int:
    woke = [int(m.group(1)) for e in events(platform, SLEEPY) if (m := WOKE.match(e))]
    assert len(woke) == 1, woke
    return woke[0]


def test_a_request_by_stage_wakes_it_too(platform):
    # Stages are deprecated in MLflow, yet still in use.
    with signed_in_as(platform.url, platform.admin) as registry, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        registry.transition_model_version_stage(SLEEPY, "1", "Production")
    eventually(lambda: answered(platform, SLEEPY, "production"), timeout_s=60)
    eventually(lambda: asleep(platform, SLEEPY), timeout_s=60)
    woken = answered(platform, SLEEPY, "production")
    assert woken.headers["x-modelhost-version"] == "1"
    assert int(woken.headers["x-modelhost-cold-start-ms"]) > 0


def test_bad_values_get_400_saying_what_fits_and_null_turns_it_off(platform):
    for bad in (0.5, -1, "soon", 10**9):
        refused = call(platform, "update-settings", registered_model_name=AWAKE,
                       scale_to_zero_after=bad)  # fmt: skip
        assert refused.status_code == 400, refused.text
        assert refused.json()["error_code"] == "BAD_REQUEST"
        assert refused.json()["message"].startswith(
            "scale_to_zero_after must be a number of seconds from 1 to 2592000"
        )
        assert "or null to keep it awake" in refused.json()["message"]
    said = modelhost(platform.url, platform.admin, "serving",
                     "settings", AWAKE, "--scale-to-zero-after", "0")  # fmt: skip
    assert said.returncode == 1 and "scale_to_zero_after must be" in said.stderr

    # Set, then turned off with null: the model without it never sleeps, and events say so.
    said = modelhost(platform.url, platform.admin, "serving", "settings", AWAKE,
                     "--scale-to-zero-after", "600")  # fmt: skip
    assert said.stdout == f"scale_to_zero_after of {AWAKE} is 600.\n", said.stderr
    assert call(platform, "update-settings", registered_model_name=AWAKE,
                scale_to_zero_after=None).status_code == 200  # fmt: skip
    settings = call(platform, "get-status", registered_model_name=AWAKE).json()["endpoint_status"][
        "settings"
    ]
    assert settings["scale_to_zero_after"] is None
    said = events(platform, AWAKE)
    assert any(e.endswith("scale_to_zero_after 600 s → off.") for e in said), said
    assert any(e.endswith("scale_to_zero_after off → 600 s.") for e in said), said
    off = modelhost(platform.url, platform.admin, "serving", "settings", AWAKE,
                    "--scale-to-zero-after", "off")  # fmt: skip
    assert off.stdout == f"scale_to_zero_after of {AWAKE} is off.\n", off.stderr
    spec = httpx.get(f"{platform.url}/openapi.json", headers=platform.headers["admin"]).text
    assert '"scale_to_zero_after":{"type":["number","null"],"minimum":1.0' in spec
