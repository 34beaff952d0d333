"""A browser signs in with a token, gets a session cookie, uses the page's data and MLflow's UI
with it, and signs out; another site's page, a planted cookie and a guesser get nowhere.

One platform with auth on for the module; a reader (READ on the model), a manager (MANAGE) and
a stranger (no grant) each have a token. The browser is played with httpx and the headers a
browser sends (`Origin`, `Sec-Fetch-Site`, `Cookie`).
"""

from __future__ import annotations

import re

import httpx
import mlflow
import pytest
from support import ONE_ROW, Platform, eventually, log_iris, modelhost, signed_in_as

API = "/api/2.0/preview/mlflow/endpoints"
SESSION = "/api/2.0/modelhost/session"
PAGE_API = "/api/2.0/modelhost"
MODEL = "browser.iris"
COOKIE = "modelhost_session"


class Browser:
    """A browser on the gateway's page: it keeps the session cookie and sends what browsers send
    with each request (`site`: the origin of the page it is on, None for a typed URL)."""

    def __init__(self, url: str, site: str | None = None) -> None:
        self.url = url
        self.site = site
        self.cookie: str | None = None

    def send(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.site is not None and method not in ("GET", "HEAD"):
            headers.setdefault("Origin", self.site)
        if self.cookie is not None:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        headers = {k: v for k, v in headers.items() if v is not None}  # None: not sent
        answer = httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)
        if (set_cookie := answer.headers.get("set-cookie")) is not None:
            value = set_cookie.split(";")[0].partition("=")[2]
            self.cookie = value or None
        return answer

    def sign_in(self, token: str) -> httpx.Response:
        return self.send("POST", SESSION, json={"token": token})


@pytest.fixture(scope="module")
def platform(tmp_path_factory, iris):
    with Platform(tmp_path_factory.mktemp("browser") / "home", "--auth") as platform:
        printed = re.findall(r"^\s+(mh_\S+)$", platform.log_path.read_text(), re.MULTILINE)
        platform.tokens = {"admin": printed[0]}
        for who in ("reader", "manager", "stranger"):
            made = modelhost(platform.url, printed[0], "users", "create", who)
            assert made.returncode == 0, made.stderr
            token = modelhost(platform.url, printed[0], "tokens", "create", "--user", who)
            platform.tokens[who] = token.stdout.strip()
        with signed_in_as(platform.url, printed[0]):
            mlflow.set_experiment("browser")
            assert log_iris(iris, MODEL) == "1"
        for who, level in (("reader", "READ"), ("manager", "MANAGE")):
            granted = modelhost(platform.url, printed[0], "permissions", "grant", MODEL,
                                "--user", who, "--level", level)  # fmt: skip
            assert granted.returncode == 0, granted.stderr
        enabled = httpx.post(f"{platform.url}{API}/enable", json={"registered_model_name": MODEL},
                             headers={"Authorization": f"Bearer {printed[0]}"})  # fmt: skip
        assert enabled.status_code == 200, enabled.text
        eventually(lambda: _ready(platform), timeout_s=180)
        yield platform


def _ready(platform) -> None:
    reader = {"Authorization": f"Bearer {platform.tokens['reader']}"}
    answer = httpx.post(f"{platform.url}/model/{MODEL}/1/invocations", json=ONE_ROW, headers=reader)
    assert answer.status_code == 200, answer.text


def _model(**more) -> dict:
    return {"registered_model_name": MODEL, **more}


def test_sign_in_use_and_sign_out(platform):
    browser = Browser(platform.url, site=platform.url)
    assert browser.send("GET", SESSION).json() == {"auth": True, "user": None, "admin": False}
    assert browser.send("GET", f"{API}/get-status", params=_model()).status_code == 401

    signed = browser.sign_in(platform.tokens["reader"])
    assert signed.status_code == 200, signed.text
    assert signed.json() == {"auth": True, "user": "reader", "admin": False}
    attributes = {a.strip().lower() for a in signed.headers["set-cookie"].split(";")[1:]}
    assert attributes == {"httponly", "samesite=strict", "path=/"}  # no Max-Age, no Expires
    assert browser.cookie and browser.cookie not in platform.tokens["reader"]
    assert browser.send("GET", SESSION).json()["user"] == "reader"

    # Everything the page reads, with the cookie alone.
    status = browser.send("GET", f"{API}/get-status", params=_model())
    assert status.status_code == 200 and status.json()["endpoint_status"]["state"]
    level = browser.send("GET", f"{PAGE_API}/models/permission", params=_model())
    assert level.json() == {"registered_model_name": MODEL, "permission_level": "READ"}
    example = browser.send("GET", f"{PAGE_API}/models/example", params=_model(version="1"))
    assert example.status_code == 200 and example.json()["source"] == "input_example"
    series = browser.send("GET", f"{PAGE_API}/metrics/series", params=_model())
    assert series.status_code == 200 and series.json()["interval_s"] == 5
    scored = browser.send("POST", f"/model/{MODEL}/1/invocations", json=example.json()["example"])
    assert scored.status_code == 200, scored.text
    # What a reader may not do, the cookie may not either.
    disabled = browser.send("POST", f"{API}/disable", json=_model())
    assert disabled.status_code == 403 and disabled.json()["error_code"] == "PERMISSION_DENIED"

    used = browser.cookie
    signed_out = browser.send("DELETE", SESSION)
    assert signed_out.status_code == 200 and browser.cookie is None
    assert "max-age=0" in signed_out.headers["set-cookie"].lower()
    browser.cookie = used  # a copy of the cookie kept from before: the session is over
    ended = browser.send("GET", f"{API}/get-status", params=_model())
    assert ended.status_code == 401 and "sign in again" in ended.json()["message"]
    assert browser.send("GET", SESSION).json()["user"] is None
    assert browser.cookie is None  # the ended session's cookie is cleared


def test_readers_only_and_levels(platform):
    for who, expected in (("reader", "READ"), ("manager", "MANAGE"), ("stranger", "NONE"),
                          ("admin", "MANAGE")):  # fmt: skip
        browser = Browser(platform.url, site=platform.url)
        assert browser.sign_in(platform.tokens[who]).status_code == 200
        level = browser.send("GET", f"{PAGE_API}/models/permission", params=_model())
        assert level.json()["permission_level"] == expected, who
    stranger = Browser(platform.url, site=platform.url)
    stranger.sign_in(platform.tokens["stranger"])
    for path, query in (("models/example", _model(version="1")), ("metrics/series", _model())):
        refused = stranger.send("GET", f"{PAGE_API}/{path}", params=query)
        assert refused.status_code == 403 and MODEL in refused.json()["message"], path
        # The same for a model that does not exist: nothing is told to who may not read.
        absent = stranger.send("GET", f"{PAGE_API}/{path}", params={**query,
                               "registered_model_name": "browser.nothing"})  # fmt: skip
        assert absent.status_code == 403, path
        anonymous = Browser(platform.url).send("GET", f"{PAGE_API}/{path}", params=query)
        assert anonymous.status_code == 401, path
    nobody = Browser(platform.url).send("GET", f"{PAGE_API}/models/permission", params=_model())
    assert nobody.status_code == 401


def test_changes_signed_in_by_the_cookie_must_come_from_the_gateways_pages(platform):
    manager = Browser(platform.url, site=platform.url)
    assert manager.sign_in(platform.tokens["manager"]).status_code == 200
    scoring = f"/model/{MODEL}/1/invocations"
    for headers in (
        {"Origin": "https://evil.example"},  # another site's page
        {"Origin": "null"},  # a sandboxed frame's
        {"Origin": platform.url, "Sec-Fetch-Site": "same-site"},  # a sibling host's page
        {"Origin": None, "Sec-Fetch-Site": "cross-site"},
    ):
        for path, body in ((f"{API}/disable", _model()), (scoring, ONE_ROW)):
            refused = manager.send("POST", path, json=body, headers=headers)
            assert refused.status_code == 403, (headers, path, refused.text)
    # A form or script that sends no Origin at all proves nothing either.
    unproven = Browser(platform.url, site=None)
    unproven.cookie = manager.cookie
    assert unproven.send("POST", scoring, json=ONE_ROW).status_code == 403
    # Still served: nothing above reached the serving API.
    status = manager.send("GET", f"{API}/get-status", params=_model()).json()
    assert status["endpoint_status"]["state"] == "ENDPOINT_STATE_READY"
    fetched = {"Sec-Fetch-Site": "same-origin", "Origin": None}
    same_origin = manager.send("POST", scoring, json=ONE_ROW, headers=fetched)
    assert same_origin.status_code == 200, same_origin.text
    # A token in the Authorization header is not a browser's: no Origin needed.
    script = {"Authorization": f"Bearer {platform.tokens['manager']}"}
    scripted = httpx.post(f"{platform.url}{scoring}", json=ONE_ROW, headers=script)
    assert scripted.status_code == 200


def test_no_site_signs_a_browser_in_and_no_cookie_is_taken_from_the_caller(platform):
    evil = Browser(platform.url, site="https://evil.example")
    refused = evil.sign_in(platform.tokens["stranger"])
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    # A cookie the gateway did not make names no session...
    planted = Browser(platform.url, site=platform.url)
    planted.cookie = "chosen-by-an-attacker"
    assert planted.send("GET", f"{API}/get-status", params=_model()).status_code == 401
    assert planted.send("GET", SESSION).json()["user"] is None
    # ...and signing in with it held gives a new one.
    assert planted.sign_in(platform.tokens["reader"]).status_code == 200
    assert planted.cookie not in (None, "chosen-by-an-attacker")
    # A token in a URL is no credential: it would be kept in histories and logs.
    for key in ("token", "access_token"):
        in_url = {**_model(), key: platform.tokens["admin"]}
        assert httpx.get(f"{platform.url}{API}/get-status", params=in_url).status_code == 401
    # A token in the cookie is not a session either.
    as_token = Browser(platform.url, site=platform.url)
    as_token.cookie = platform.tokens["admin"]
    assert as_token.send("GET", f"{API}/get-status", params=_model()).status_code == 401


def test_mlflow_ui_loads_for_all_and_its_calls_are_judged_as_the_apis(platform):
    index = httpx.get(f"{platform.url}/mlflow/")  # public: a link from elsewhere carries no cookie
    assert index.status_code == 200 and "static-files/" in index.text
    script = re.search(r'src="(?:\./)?(static-files/[^"]+\.js)"', index.text)
    assert script is not None
    assert httpx.get(f"{platform.url}/mlflow/{script.group(1)}").status_code == 200
    search = "/mlflow/ajax-api/2.0/mlflow/registered-models/search"
    assert Browser(platform.url).send("GET", search).status_code == 401
    names = {}
    for who in ("reader", "stranger"):
        browser = Browser(platform.url, site=platform.url)
        browser.sign_in(platform.tokens[who])
        found = browser.send("GET", search)
        assert found.status_code == 200, found.text
        names[who] = [m["name"] for m in found.json().get("registered_models", [])]
        # Under /mlflow/ exactly as at the registry's own path.
        direct = browser.send("GET", search.removeprefix("/mlflow"))
        assert [m["name"] for m in direct.json().get("registered_models", [])] == names[who]
    assert names == {"reader": [MODEL], "stranger": []}
    mlmodel = "/mlflow/model-versions/get-artifact"
    query = {"path": "MLmodel", "name": MODEL, "version": "1"}
    for who, status in (("reader", 200), ("stranger", 403)):
        browser = Browser(platform.url, site=platform.url)
        browser.sign_in(platform.tokens[who])
        assert browser.send("GET", mlmodel, params=query).status_code == status, who
        # What is judged by nothing finer is for admins: a run's files, GraphQL queries.
        graphql = browser.send("POST", "/mlflow/graphql", json={"query": "{ __typename }"})
        assert graphql.status_code == 403, who
    reader = Browser(platform.url, site=platform.url)
    reader.sign_in(platform.tokens["reader"])
    delete = "/mlflow/ajax-api/2.0/mlflow/registered-models/delete"
    refused = reader.send("DELETE", delete, json={"name": MODEL})
    assert refused.status_code == 403 and "MANAGE" in refused.json()["message"]


def test_revoking_the_token_ends_its_sessions_and_secrets_stay_out_of_the_log(platform):
    admin = platform.tokens["admin"]
    made = httpx.post(f"{platform.url}{PAGE_API}/tokens/create", json={"user": "reader"},
                      headers={"Authorization": f"Bearer {admin}"}).json()  # fmt: skip
    token = made["token"]
    browser = Browser(platform.url, site=platform.url)
    assert browser.sign_in(token).status_code == 200
    assert browser.send("GET", f"{API}/get-status", params=_model()).status_code == 200
    revoked = modelhost(platform.url, admin, "tokens", "revoke", made["token_info"]["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert browser.send("GET", f"{API}/get-status", params=_model()).status_code == 401
    log = platform.log_path.read_text()
    assert token not in log and browser.cookie not in log
    assert not any(t in log for who, t in platform.tokens.items() if who != "admin")


def test_failed_sign_ins_count_towards_the_addresses_limit(platform):
    """Last in the module: it spends this address' allowance of failures."""
    browser = Browser(platform.url, site=platform.url)
    answers = [browser.sign_in(f"mh_guess-{n}").status_code for n in range(30)]
    assert set(answers[:5]) == {401} and answers[-1] == 429, answers
    limited = browser.sign_in("mh_guess-again")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # The same limit as a wrong Authorization header's.
    # (One allowance comes back each second: on a loaded machine one try may find it.)
    wrong = {"Authorization": "Bearer mh_wrong"}
    tries = [httpx.get(f"{platform.url}{API}/list", headers=wrong).status_code for _ in range(3)]
    assert 429 in tries, tries
