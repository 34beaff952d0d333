"""Running batch jobs: each in a process of its own, started and watched from a thread.

A job never runs in the gateway's process: a thread of its own fetches the model version from
the registry (as model servers get theirs, control/placement.py), prepares its Python
environment, then starts `modelhost batch run` on the fetched copy in a process group of its
own, as model code runs (control/isolation.py: the model user, a scrubbed environment with no
registry secret or admin token). The thread reads the progress file the runner rewrites
(batch-contract: rows done, rows/s, errors) into the store of jobs until the process ends.

Cancelling sends SIGTERM to the job's process group, then SIGKILL after a grace period.
Stopping modelhost cancels every running job; jobs a previous run left PENDING or RUNNING
(modelhost was killed) become FAILED when it starts again, and a process such a run left is
stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from modelhost.batch.jobs import JobState
from modelhost.batch.jobs_paths import confine_paths
from modelhost.batch.jobs_store import PROGRESS, JobRecord, JobStore
from modelhost.config import EnvManager
from modelhost.control.environments import Environment, prepare
from modelhost.control.isolation import Isolation
from modelhost.control.placement import fetch_version
from modelhost.control.requirements import read_requirements
from modelhost.errors import ModelhostError
from modelhost.processes import stop_group

log = logging.getLogger("modelhost.batch")

# What a job runs, after the Python of the model's environment.
RUNNER = ("-m", "modelhost", "batch", "run")
CANCEL_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
WATCH_INTERVAL_S = 0.5  # how often a running job's progress is read
RESTARTED = (
    "modelhost stopped while the job ran; submit it again with the same output to resume from "
    "the parts already written."
)
# A node not seen for this long has died: its unfinished jobs are ended FAILED by the others.
NODE_GONE_S = 30.0
STOPPED = (
    "Cancelled: modelhost stopped. Submit it again with the same output to resume from the "
    "parts already written."
)
Record = Callable[[str, str, str | None], None]  # an event: (model name, message, version)


class Stopping(Exception):
    """The job was cancelled while it was being prepared."""


@dataclass
class _Run:
    """One job being run: its thread, its process once started, and whether to stop it."""

    job: JobRecord
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = "Cancelled."


class JobManager:
    """Starts, watches and stops the platform's batch jobs; every call returns promptly except
    `cancel` (waits up to `wait_s`) and `stop`."""

    def __init__(
        self,
        store: JobStore,
        home: Path,
        batch_root: Path,
        registry_url: str,
        isolation: Isolation,
        record: Record,
        runner: Sequence[str] = RUNNER,
        running_at_once: int = 2,
        grace_s: float = CANCEL_GRACE_S,
    ) -> None:
        self.store = store
        self.home = home.resolve()  # model code reaches its files by real paths
        self.batch_root = batch_root
        self.registry_url = registry_url
        self.isolation = isolation
        self.record = record
        self.runner = list(runner)
        self.grace_s = grace_s
        self.running_at_once = running_at_once
        self._slots = threading.BoundedSemaphore(running_at_once)
        self.logs = self.home / "logs" / "batch"
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._gone_checked_at = -NODE_GONE_S

    def open(self) -> None:
        """At start: the batch folder made, and jobs a previous run left ended."""
        self.batch_root.mkdir(parents=True, exist_ok=True)
        if self.isolation.enabled:
            # Jobs run as the model user: it may pass through the batch folder (not list it)
            # to read inputs and write outputs where each job is given its output folder.
            mode = self.batch_root.stat().st_mode
            os.chmod(self.batch_root, (mode & 0o7777) | 0o001)
        self.logs.mkdir(parents=True, exist_ok=True)
        for job in self.store.unfinished():
            _kill_left_over(job)
            if self.store.finish(job.id, JobState.FAILED, RESTARTED, pid=None):
                event = _event(job, "failed", RESTARTED)
                self.record(job.registered_model_name, event, job.version)
                log.warning("Batch job %s was left %s by a previous run.", job.id, job.state)

    def start(self, job: JobRecord) -> None:
        """Run `job` (PENDING in the store) on a thread of its own."""
        run = _Run(job)
        run.thread = threading.Thread(
            target=self._run, args=(run,), name=f"modelhost-batch-{job.id}", daemon=True
        )
        with self._lock:
            if self._stopping:
                raise ModelhostError("modelhost is stopping: submit the job again once it is up.")
            self._runs[job.id] = run
        run.thread.start()

    def cancel(self, job_id: str, reason: str, wait_s: float = 0.0) -> None:
        """Stop a job (SIGTERM, then SIGKILL after the grace period); waits up to `wait_s`."""
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return
        run.reason = reason
        run.cancelled.set()
        if run.process is not None:
            _signal_group(run.process, signal.SIGTERM)
        if wait_s > 0 and run.thread is not None:
            run.thread.join(wait_s)

    def cancel_asked(self, asked: dict[str, str]) -> None:
        """Cancel the jobs of this node that another node was asked to cancel (id -> why)."""
        for job_id, reason in asked.items():
            with self._lock:
                run = self._runs.get(job_id)
            if run is not None and not run.cancelled.is_set():
                self.cancel(job_id, reason)

    def end_jobs_of_gone_nodes(self) -> None:
        """On a thread (control/node.py's watch): the jobs of a node that died end FAILED, and
        say so, rather than show RUNNING for good; the first node to see it ends each."""
        if time.monotonic() < self._gone_checked_at + NODE_GONE_S / 3:
            return
        self._gone_checked_at = time.monotonic()
        for job in self.store.of_gone_nodes(time.time() - NODE_GONE_S):
            message = (
                f"Its node {job.node} stopped (not seen for {NODE_GONE_S:g} s); submit it again "
                "with the same output to resume from the parts already written."
            )
            if self.store.finish(job.id, JobState.FAILED, message, pid=None):
                self.record(job.registered_model_name, _event(job, "failed", message), job.version)
                log.warning("Batch job %s ended: its node %s stopped.", job.id, job.node)

    def stop(self) -> None:
        """Cancel every running job and wait until their processes are gone."""
        with self._lock:
            self._stopping = True
            runs = list(self._runs.values())
        for run in runs:
            self.cancel(run.job.id, STOPPED)
        for run in runs:
            if run.thread is not None:
                run.thread.join(self.grace_s + 15)
            if run.process is not None and run.process.poll() is None:
                stop_group(run.process, 0)  # its thread is stuck: nothing may outlive us
            self.store.finish(run.job.id, JobState.CANCELLED, STOPPED)

    # --- on a job's thread

    def _run(self, run: _Run) -> None:
        job = run.job
        job_log = self.logs / f"{job.id}.log"
        scratch: Path | None = None
        slot = False
        try:
            slot = self._take_slot(run)
            local_path, environment, groups = self._prepare(run, job_log)
            if run.cancelled.is_set():
                raise Stopping
            # Checked again: a folder on the way may have become a link since it was submitted.
            confine_paths(self.batch_root, job.input, job.output)
            scratch = self._scratch(job, groups[0] if groups else None)
            progress = scratch / "progress.json"
            self._make_output(Path(job.output), groups[0] if groups else None)
            self._launch(run, local_path, environment, groups, scratch, progress, job_log)
            self._watch(run, progress, job_log)
        except Stopping:
            self._end(run, JobState.CANCELLED, run.reason, {})
        except Exception as e:  # the registry, the disk, a bug: the job says what it was
            message = e.message if isinstance(e, ModelhostError) else f"{type(e).__name__}: {e}"
            log.exception("Batch job %s failed to run", job.id)
            _append(job_log, f"The job failed: {message}")
            self._end(run, JobState.FAILED, f"The job could not run: {message}", {})
        finally:
            if run.process is not None and run.process.poll() is None:
                stop_group(run.process, 0)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if slot:
                self._slots.release()
            with self._lock:
                self._runs.pop(job.id, None)

    def _take_slot(self, run: _Run) -> bool:
        """Waits, PENDING, while `running_at_once` jobs run; raises Stopping if cancelled."""
        if self._slots.acquire(blocking=False):
            return True
        waiting = f"Waiting: {self.running_at_once} batch job(s) are running (--batch-jobs)."
        self.store.update(run.job.id, message=waiting)
        while not self._slots.acquire(timeout=WATCH_INTERVAL_S):
            if run.cancelled.is_set():
                raise Stopping
        self.store.update(run.job.id, message=None)
        return True

    def _prepare(self, run: _Run, job_log: Path) -> tuple[Path, Environment, list[int]]:
        """The version fetched and its environment ready; the groups the job runs in."""
        job = run.job
        name, version = job.registered_model_name, job.version

        def say(line: str, level: int = logging.INFO) -> None:
            if run.cancelled.is_set():  # raised inside a build's output loop, which kills uv
                raise Stopping
            _append(job_log, line)

        registry = MlflowClient(tracking_uri=self.registry_url, registry_uri=self.registry_url)
        found = registry.get_model_version(name, version)
        identity = f"{found.source} {found.creation_timestamp}"  # as control/desired.py has it
        local_path = fetch_version(
            self.home / "models", registry, self.registry_url, self.isolation,
            name, version, identity, say,
        )  # fmt: skip
        requirements = read_requirements(local_path)
        # A spark job's driver runs where PySpark is, here; spark_udf restores the model's
        # environment on the executors itself.
        spark = job.options.engine == "spark"
        manager = EnvManager.LOCAL if spark else job.options.env_manager
        environment = prepare(requirements, manager, self.home / "envs", say, self.isolation)
        groups: list[int] = []
        model_group = self.isolation.group(f"model:{name}")
        if model_group is not None:
            groups.append(model_group)
            if not environment.current:
                env_group = self.isolation.group(f"env:{environment.key}")
                groups += [env_group] if env_group is not None else []
        return local_path, environment, groups

    def _scratch(self, job: JobRecord, group: int | None) -> Path:
        """The job's own writable folder: its progress file, HOME and TMPDIR."""
        scratch = self.isolation.scratch(f"batch-{job.id}", group)
        if scratch is None:
            scratch = self.home / "scratch" / f"batch-{job.id}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
        return scratch

    def _make_output(self, output: Path, group: int | None) -> None:
        """The output folder, writable by the job (the model's group when isolated)."""
        missing = [p for p in [output, *output.parents] if not p.exists()]
        output.mkdir(parents=True, exist_ok=True)
        if group is None:
            return
        for folder in missing[1:]:
            os.chmod(folder, 0o711)  # the model user passes through, lists nothing
        os.chown(output, 0, group)
        os.chmod(output, 0o770)

    def _launch(
        self,
        run: _Run,
        local_path: Path,
        environment: Environment,
        groups: list[int],
        scratch: Path,
        progress: Path,
        job_log: Path,
    ) -> None:
        job = run.job
        spark = job.options.engine == "spark"
        env = environment.process_env(self.isolation.environ(os.environ))
        env.update(HOME=str(scratch), TMPDIR=str(scratch))
        command = [
            str(environment.python), *self.runner, str(local_path),
            "--input", job.input, "--output", job.output, "--progress-file", str(progress),
            *job.options.runner_flags(),
            # The model's environment is the one prepared above, but for spark's executors.
            "--env-manager", job.options.env_manager if spark else "local",
        ]  # fmt: skip
        self.isolation.let_through()
        _append(job_log, f"Starting: {' '.join(command)}")
        with open(job_log, "ab") as output:
            run.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=scratch, start_new_session=True,
                **self.isolation.process_options(groups[0] if groups else None, groups[1:]),
            )  # fmt: skip
        if run.cancelled.is_set():  # cancelled while it started: cancel() saw no process yet
            _signal_group(run.process, signal.SIGTERM)
        self.store.update(job.id, state=JobState.RUNNING, started_at=time.time(),
                          pid=run.process.pid, message=None)  # fmt: skip
        self.record(job.registered_model_name, _event(job, "started"), job.version)

    def _watch(self, run: _Run, progress: Path, job_log: Path) -> None:
        """Copy the runner's progress to the store until its process ends; then end the job."""
        assert run.process is not None
        shown: dict[str, Any] = {}
        stop_at: float | None = None
        while run.process.poll() is None:
            if run.cancelled.is_set() and stop_at is None:
                stop_at = time.monotonic() + self.grace_s
            if stop_at is not None and time.monotonic() > stop_at:
                _signal_group(run.process, signal.SIGKILL)
            report = _progress(progress)
            if report and report != shown:
                self.store.update(run.job.id, **report)
                shown = report
            time.sleep(WATCH_INTERVAL_S)
        stop_group(run.process, 0)  # what its workers left behind, if anything
        report = _progress(progress, final=True)
        code = run.process.returncode
        if run.cancelled.is_set():
            self._end(run, JobState.CANCELLED, run.reason, report)
        elif code == 0 and report.get("state") == JobState.SUCCEEDED:
            self._end(run, JobState.SUCCEEDED, report.get("message"), report)
        else:
            message = (
                report.get("message")
                or _last_error(job_log)
                or (f"The job's process exited with code {code} without saying why.")
            )
            self._end(run, JobState.FAILED, message, report)

    def _end(self, run: _Run, state: JobState, message: str | None, report: dict) -> None:
        job = run.job
        fields = {k: v for k, v in report.items() if k in PROGRESS and k != "message"}
        if state is JobState.SUCCEEDED and fields.get("rows_total") is None:
            # A runner that streams its input learns the total only once it is done.
            fields["rows_total"] = fields.get("rows_done")
        if self.store.finish(job.id, state, message, pid=None, **fields):
            what = {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed",
                    JobState.CANCELLED: "was cancelled"}[state]  # fmt: skip
            self.record(job.registered_model_name, _event(job, what, message), job.version)


def _event(job: JobRecord, what: str, message: str | None = None) -> str:
    line = f"Batch job {job.id} {what} (version {job.version}, output {job.output})"
    return f"{line}: {message}" if message else f"{line}."


def _progress(path: Path, final: bool = False) -> dict[str, Any]:
    """The runner's last progress report (rewritten whole, by rename), as store fields."""
    try:
        # Written by model code, read by us: never through a link it may have put there.
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            report = json.loads(f.read(64 * 1024))
    except (OSError, ValueError):
        return {}
    if not isinstance(report, dict):
        return {}
    found: dict[str, Any] = {k: report.get(k) for k in PROGRESS if k in report}
    for key in ("rows_done", "rows_failed"):
        if not isinstance(found.get(key), int):
            found.pop(key, None)
    if not isinstance(found.get("rows_per_s"), int | float):
        found.pop("rows_per_s", None)
    if found.get("rows_total") is not None and not isinstance(found["rows_total"], int):
        found.pop("rows_total")
    for key in ("message", "errors_file"):
        if found.get(key) is not None and not isinstance(found[key], str):
            found.pop(key)
    if final:
        found["state"] = report.get("state")
    elif "message" in found and found["message"] is None:
        found.pop("message")
    return found


def _last_error(job_log: Path) -> str | None:
    """The runner's last line, `Error: <message>` as the command line ends with."""
    with contextlib.suppress(OSError):
        with open(job_log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
        for line in reversed(lines):
            if line.startswith("Error: "):
                return line[len("Error: ") :]
        return next((line for line in reversed(lines) if line), None)
    return None


def _append(job_log: Path, line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(job_log, "a", encoding="utf-8") as f:
        f.write(f"{stamp} {line}\n")


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _kill_left_over(job: JobRecord) -> None:
    """A job process a killed modelhost left running: stopped, so it writes no more."""
    if job.pid is None:
        return
    try:
        command = Path(f"/proc/{job.pid}/cmdline").read_bytes()
    except OSError:
        return  # gone
    if f"batch-{job.id}".encode() in command:  # its progress file: it is that job's, not reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)
        log.warning("Stopped the process of batch job %s, which a previous run left.", job.id)
