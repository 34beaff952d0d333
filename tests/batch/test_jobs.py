"""Batch jobs on `modelhost up`: submitted, watched, cancelled and refused through the API and
the command line, by real users with real tokens, on a real registry.

One platform for the module, with auth on and a batch folder of its own. The jobs score the
sleeper toy model, whose rows take as long as their `seconds` say.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from support import Platform, eventually, modelhost, signed_in_as

from modelhost.batch.jobs import JobState
from modelhost.batch.jobs_store import JobStore

JOBS = "/api/2.0/modelhost/batch/jobs"
ADMIN_TOKEN = "batch-jobs-admin-token-0123456789abcdef"
MODEL = "batch.sleeper"
HIDDEN = "batch.hidden"  # no grant: only admins may read it
TOYS = Path(__file__).parent.parent / "toys"
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
RESTARTED = "modelhost stopped while the job ran; submit it again with the same output"


@dataclass
class World:
    platform: Platform
    root: Path  # the batch folder
    tokens: dict[str, str]

    def call(self, who: str, method: str, path: str = "", **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.request(method, self.platform.url + JOBS + path, headers=headers,
                             timeout=60, **kwargs)  # fmt: skip

    def submit(self, who: str, **body) -> dict:
        if "registered_model_name" not in body:
            body.setdefault("model_uri", f"models:/{MODEL}/1")
        body.setdefault("env_manager", "local")
        answer = self.call(who, "POST", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["job"]

    def job(self, who: str, job_id: str) -> dict:
        answer = self.call(who, "GET", f"/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()["job"]

    def ended(self, who: str, job_id: str, timeout_s: float = 120) -> dict:
        def finished() -> dict:
            job = self.job(who, job_id)
            assert job["state"] in FINISHED, job
            return job

        return eventually(finished, timeout_s)

    def running(self, who: str, job_id: str) -> dict:
        def started() -> dict:
            job = self.job(who, job_id)
            assert job["state"] == "RUNNING" and job["rows_done"] >= 1, job
            return job

        return eventually(started, 120)

    def cli(self, who: str, *args: str):
        return modelhost(self.platform.url, self.tokens[who], "batch", *args)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # As root, jobs run as the model user: the batch folder must be outside pytest's own.
    root = Path(tempfile.mkdtemp(prefix="modelhost-batch-"))
    outside = Path(tempfile.mkdtemp(prefix="modelhost-outside-"))
    _inputs(root, outside)
    home = tmp_path_factory.mktemp("batch-jobs") / "home"
    platform = Platform(home, "--auth", "--admin-token", ADMIN_TOKEN, "--batch-root", str(root))
    try:
        with platform:
            world = World(platform, root, {"admin": ADMIN_TOKEN})
            _people(world)
            with signed_in_as(platform.url, ADMIN_TOKEN) as client:
                mlflow.set_experiment("batch-jobs")
                for name in (MODEL, MODEL, HIDDEN):
                    _log_sleeper(name)
                client.set_registered_model_alias(MODEL, "champion", "1")
            yield world
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def _inputs(root: Path, outside: Path) -> None:
    data = root / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    pd.DataFrame({"x": range(10), "seconds": 0.0}).to_csv(data / "fast.csv", index=False)
    pd.DataFrame({"x": range(60), "seconds": 1.0}).to_csv(data / "slow.csv", index=False)
    pd.DataFrame({"x": range(5)}).to_csv(data / "bad.csv", index=False)
    pd.DataFrame({"x": [1]}).to_csv(outside / "secret.csv", index=False)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (data / "link.csv").symlink_to(outside / "secret.csv")


def _people(world: World) -> None:
    """A reader and an editor of MODEL, and a stranger to it, each with a token."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"{world.platform.url}/api/2.0/modelhost", headers=admin) as api:
        for who, level in [("reader", "READ"), ("editor", "EDIT"), ("stranger", None)]:
            user = {"name": who, "kind": "user", "admin": False}
            api.post("/users/create", json=user).raise_for_status()
            made = api.post("/tokens/create", json={"user": who})
            world.tokens[who] = made.raise_for_status().json()["token"]
            if level is not None:
                grant = {"target": MODEL, "user": who, "level": level}
                api.post("/permissions/grant", json=grant).raise_for_status()


def _log_sleeper(name: str) -> None:
    """The toy sleeper model, logged and registered as a new version of `name`."""
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=str(TOYS / "sleeper.py"), registered_model_name=name,
            pip_requirements=["mlflow", "pandas"],
        )  # fmt: skip


def _job_processes(world: World, job_id: str) -> list[int]:
    """Process ids of the job's processes: their command names its progress file."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"batch-{job_id}" in command:
            pids.append(int(proc.name))
    return pids


def _error(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error_code", "message"}, body
    return body["message"]


def test_a_job_scores_the_version_its_alias_named_at_submit(world):
    job = world.submit("reader", model_uri=f"models:/{MODEL}@champion", input="data/fast.csv",
                       output="scores/fast", chunk_rows=4, output_format="csv")  # fmt: skip
    assert job["version"] == "1" and job["state"] in ("PENDING", "RUNNING")
    assert job["submitter"] == "reader" and job["output"] == str(world.root / "scores/fast")
    done = world.ended("reader", job["job_id"])
    assert done["state"] == "SUCCEEDED", done
    assert done["rows_done"] == done["rows_total"] == 10 and done["rows_failed"] == 0
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    parts = sorted((world.root / "scores/fast").glob("part-*"))
    assert len(parts) == 3  # 10 rows in chunks of 4
    scored = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    assert list(scored["x"]) == list(range(10)) and "prediction" in scored

    # The alias moves: a new job scores the new version, the first still says version 1.
    with signed_in_as(world.platform.url, ADMIN_TOKEN):
        MlflowClient().set_registered_model_alias(MODEL, "champion", "2")
    again = world.submit("editor", registered_model_name=MODEL, alias="champion",
                         input="data/fast.csv", output="scores/fast-2")  # fmt: skip
    assert again["version"] == "2"
    assert world.job("reader", job["job_id"])["version"] == "1"
    listed = world.call("reader", "GET", params={"registered_model_name": MODEL}).json()["jobs"]
    assert [j["job_id"] for j in listed][-2:] == [again["job_id"], job["job_id"]]
    assert world.ended("editor", again["job_id"])["state"] == "SUCCEEDED"


def test_bad_data_fails_the_job_with_the_runners_message(world):
    job = world.submit("reader", input="data/bad.csv", output="scores/bad")
    done = world.ended("reader", job["job_id"])
    assert done["state"] == "FAILED"
    assert "bad.csv" in done["message"] and "seconds" in done["message"], done


def _asking(**fields) -> dict:
    """A job request: version 1 of MODEL on the fast input, with `fields` changed (None drops)."""
    body = {"model_uri": f"models:/{MODEL}/1", "input": "data/fast.csv", "output": "o", **fields}
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (_asking(model_uri=None), "model_uri"),
        (_asking(model_uri="runs:/abc/model"), "Jobs score registered model versions only"),
        (_asking(model_uri="/srv/models/x"), "Jobs score registered model versions only"),
        (_asking(model_uri=None, registered_model_name=MODEL, version="1", alias="a"), "exactly"),
        (_asking(version="1"), "not both"),
        (_asking(output=None), "Pass 'output'"),
        (_asking(workers=0), "'workers' must be a whole number"),
        (_asking(engine="dask"), "'engine' must be one of local, spark"),
        (_asking(spark_conf={}), "Unknown field 'spark_conf'"),
    ],
)
def test_a_bad_request_is_refused_naming_what_to_send(world, body, said):
    assert said in _error(world.call("reader", "POST", json=body), 400)


def test_unknown_versions_jobs_and_routes(world):
    absent = world.call("reader", "POST", json=_asking(model_uri=f"models:/{MODEL}/9"))
    assert MODEL in _error(absent, 404)
    no_stage = world.call("reader", "POST", json=_asking(model_uri=f"models:/{MODEL}/Production"))
    assert "no version of 'batch.sleeper' is in stage Production" in _error(no_stage, 404)
    assert "No batch job" in _error(world.call("reader", "GET", "/0123456789abcdef"), 404)
    assert world.call("reader", "GET", "/0123456789abcdef/cancel").status_code == 405
    assert world.call("reader", "GET", "/a/b/c").status_code == 404


@pytest.mark.parametrize(
    ("given_input", "given_output", "said"),
    [
        ("../secret.csv", "o", "'input' '../secret.csv' is outside the batch folder"),
        ("/etc/passwd", "o", "'input' '/etc/passwd' is outside the batch folder"),
        # Links to outside the batch folder: on the way, as the file, in a folder, by a glob.
        ("escape/secret.csv", "o", "is outside the batch folder"),
        ("data/link.csv", "o", "is outside the batch folder"),
        ("data", "o", "a link to outside the batch folder"),
        ("data/*.csv", "o", "a link to outside the batch folder"),
        ("data/fast.csv", "../out", "'output' '../out' is outside the batch folder"),
        ("data/fast.csv", "/tmp/out", "'output' '/tmp/out' is outside the batch folder"),
        ("data/fast.csv", "escape/out", "'output' 'escape/out' is outside the batch folder"),
        ("data/fast.csv", ".", "not the folder itself"),
        ("data/fast.csv", "data", "holds the input file"),
        ("data/fast.csv", "data/fast.csv", "is a file"),
        ("data/fast.csv", "data/fast.csv/x", "lies below the file"),
    ],
)
def test_paths_stay_in_the_batch_folder(world, given_input, given_output, said):
    body = {"model_uri": f"models:/{MODEL}/1", "input": given_input, "output": given_output}
    assert said in _error(world.call("reader", "POST", json=body), 400)
    assert not (world.root.parent / "out").exists() and not Path("/tmp/out").exists()


def test_permissions_follow_the_model(world):
    body = {"model_uri": f"models:/{MODEL}/1", "input": "data/fast.csv", "output": "o-stranger"}
    assert "needs READ" in _error(world.call("stranger", "POST", json=body), 403)
    hidden = world.submit("admin", model_uri=f"models:/{HIDDEN}/1", input="data/fast.csv",
                          output="scores/hidden")  # fmt: skip
    mine = world.submit("reader", input="data/fast.csv", output="scores/readers")
    for who in ("reader", "stranger"):
        # Not 403: a job on a model the caller may not read is not there for them.
        _error(world.call(who, "GET", f"/{hidden['job_id']}"), 404)
        _error(world.call(who, "POST", f"/{hidden['job_id']}/cancel"), 404)
        seen = {j["job_id"] for j in world.call(who, "GET").json()["jobs"]}
        assert hidden["job_id"] not in seen
    _error(world.call("stranger", "GET", f"/{mine['job_id']}"), 404)
    # No token at all: nothing, not even the list, and nothing started.
    anonymous = world.platform.url + JOBS
    assert httpx.get(anonymous, timeout=30).status_code == 401
    assert httpx.get(f"{anonymous}/{mine['job_id']}", timeout=30).status_code == 401
    assert httpx.post(anonymous, json={**body, "output": "o-anon"}, timeout=30).status_code == 401
    assert not (world.root / "o-anon").exists()
    everything = {j["job_id"] for j in world.call("admin", "GET").json()["jobs"]}
    assert {hidden["job_id"], mine["job_id"]} <= everything
    assert world.ended("admin", hidden["job_id"])["state"] == "SUCCEEDED"


def test_cancel_stops_the_jobs_process_group(world):
    job = world.submit("editor", input="data/slow.csv", output="scores/slow", chunk_rows=1)
    world.running("editor", job["job_id"])
    pids = _job_processes(world, job["job_id"])
    assert pids, "the job runs in a process of its own"
    for pid in pids:
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert ADMIN_TOKEN.encode() not in environment
        assert b"MLFLOW_TRACKING_TOKEN" not in environment and b"MODELHOST_" not in environment
        if os.geteuid() == 0:
            assert Path(f"/proc/{pid}").stat().st_uid != 0, "model code runs as the model user"
    # A reader may cancel only their own jobs; the editor may cancel any on the model.
    assert "EDIT" in _error(world.call("reader", "POST", f"/{job['job_id']}/cancel"), 403)
    cancelled = world.cli("editor", "cancel", job["job_id"])
    assert cancelled.returncode == 0, cancelled.stderr
    done = world.ended("editor", job["job_id"], timeout_s=60)
    assert done["state"] == "CANCELLED" and "editor" in done["message"]
    assert 1 <= done["rows_done"] < 60
    eventually(lambda: _gone(pids), timeout_s=30)
    again = world.call("editor", "POST", f"/{job['job_id']}/cancel")
    assert again.status_code == 200 and again.json()["job"]["state"] == "CANCELLED"


def test_jobs_past_the_limit_wait_their_turn(world):
    # `up` runs two jobs at once by default (--batch-jobs); a third waits, PENDING, saying why.
    jobs = [
        world.submit("editor", input="data/slow.csv", output=f"scores/turn-{n}", chunk_rows=1)
        for n in range(3)
    ]
    first, second, third = (job["job_id"] for job in jobs)
    world.running("editor", first)
    world.running("editor", second)
    waiting = world.job("editor", third)
    assert waiting["state"] == "PENDING" and "--batch-jobs" in waiting["message"]
    assert world.call("editor", "POST", f"/{first}/cancel").status_code == 200
    world.running("editor", third)  # its turn came when the first ended
    for job_id in (second, third):
        assert world.call("editor", "POST", f"/{job_id}/cancel").status_code == 200
        assert world.ended("editor", job_id, timeout_s=60)["state"] == "CANCELLED"


def test_the_command_line_submits_waits_lists_and_shows(world):
    submitted = world.cli("reader", "submit", MODEL, "--version", "1", "--input",
                          "data/fast.csv", "--output", "scores/cli", "--chunk-rows", "5",
                          "--env-manager", "local", "--wait")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["state"] == "SUCCEEDED" and job["rows_done"] == 10
    assert "SUCCEEDED: 10/10 rows" in submitted.stderr
    shown = world.cli("reader", "status", job["job_id"])
    assert json.loads(shown.stdout)["job_id"] == job["job_id"]
    listed = world.cli("reader", "list", "--model", MODEL)
    assert job["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)]
    failed = world.cli("reader", "submit", f"models:/{MODEL}/1", "--input", "data/bad.csv",
                       "--output", "scores/cli-bad", "--wait")  # fmt: skip
    assert failed.returncode == 1 and "FAILED" in failed.stderr
    refused = world.cli("stranger", "status", job["job_id"])
    assert refused.returncode == 1 and "No batch job" in refused.stderr


def test_a_job_running_when_modelhost_dies_is_failed_at_restart(world):
    """Last: `up` is killed with the job running, then started again on the same home; then
    stopped with another job running."""
    job = world.submit("reader", input="data/slow.csv", output="scores/killed", chunk_rows=1)
    world.running("reader", job["job_id"])
    platform = world.platform
    orphans = _job_processes(world, job["job_id"])
    platform.process.send_signal(signal.SIGKILL)
    platform.process.wait(timeout=30)
    # What else it started (the registry) goes too; the job's process is left, as a crash
    # leaves it, for the next start to stop.
    for pid in _pids_of(platform.marker):
        if pid not in orphans:
            os.kill(pid, signal.SIGKILL)
    eventually(lambda: _only(platform.marker, orphans), timeout_s=30)
    platform.start()
    done = world.job("reader", job["job_id"])
    assert done["state"] == "FAILED" and RESTARTED in done["message"], done
    eventually(lambda: _gone(orphans), timeout_s=30)

    # Stopped as a user stops it, modelhost cancels its running job and leaves no process.
    last = world.submit("reader", input="data/slow.csv", output="scores/stopped", chunk_rows=1)
    world.running("reader", last["job_id"])
    platform.stop()  # and checks that nothing it started is left
    store = JobStore(sa.create_engine(f"sqlite:///{platform.home / 'state.db'}"))
    stopped = store.get(last["job_id"])
    assert stopped is not None and stopped.state is JobState.CANCELLED
    assert "modelhost stopped" in (stopped.message or "")


def _pids_of(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _only(marker: str, allowed: list[int]) -> None:
    assert set(_pids_of(marker)) <= set(allowed)


def _gone(pids: list[int]) -> None:
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        assert state == "Z", f"process {pid} still runs"
