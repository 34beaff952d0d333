"""Batch jobs as callers see them: submit, list, status and cancel, with their permissions.

No HTTP here (batch/jobs_api.py is the edge), and every call blocks on the registry, the disk
or the state database: the gateway calls them on a thread. With auth off `caller` is None and
everything is allowed; with auth on, rights are those of auth/policy.py (JOB_*).
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from modelhost.auth.policy import JOB_CANCEL, JOB_READ, JOB_SUBMIT, Caller
from modelhost.batch.jobs import JobRequest, JobState, ModelRef
from modelhost.batch.jobs_manager import JobManager
from modelhost.batch.jobs_paths import confine_paths
from modelhost.batch.jobs_store import JobRecord, JobStore, new_job
from modelhost.errors import InvalidInput, ModelhostError, NotFound, NotReady, PermissionDenied

CANCEL_WAIT_S = 5.0  # a cancel answers once the job ended, or after this with it still ending


class Jobs:
    def __init__(
        self, store: JobStore, manager: JobManager, registry_url: str, batch_root: Path
    ) -> None:
        self.store = store
        self.manager = manager
        self.registry = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self.batch_root = batch_root

    def submit(self, request: JobRequest, caller: Caller | None) -> JobRecord:
        """Check the request, resolve the version it names, record the job and start it."""
        name = request.model.name
        if caller is not None and not caller.may(name, JOB_SUBMIT):
            raise PermissionDenied(
                f"Running a batch job on registered model '{name}' needs {JOB_SUBMIT.name} on "
                "it, which you do not have (or it does not exist). Ask one of its managers, or "
                "an admin, for a grant."
            )
        paths = confine_paths(self.batch_root, request.input, request.output)
        version = self._resolve(request.model)
        job = new_job(
            registered_model_name=name,
            version=version,
            model_ref=str(request.model),
            input=paths.input,
            output=paths.output,
            options=request.options,
            submitter=caller.name if caller is not None else None,
        )
        self.store.add(job)
        try:
            self.manager.start(job)
        except ModelhostError as e:
            self.store.finish(job.id, JobState.FAILED, e.message)
            raise NotReady(e.message) from None
        return job

    def list(self, caller: Caller | None, name: str | None = None) -> list[JobRecord]:
        """Newest first: the jobs on models the caller may read (of one model, or all)."""
        return [job for job in self.store.list(name) if _readable(job, caller)]

    def get(self, job_id: str, caller: Caller | None) -> JobRecord:
        job = self.store.get(job_id)
        if job is None or not _readable(job, caller):
            raise NotFound(f"No batch job {job_id!r}: list yours with `modelhost batch list`.")
        return job

    def cancel(self, job_id: str, caller: Caller | None) -> JobRecord:
        """Stop a PENDING or RUNNING job; a job that has ended is answered as it is."""
        job = self.get(job_id, caller)
        own = caller is None or (job.submitter is not None and caller.name == job.submitter)
        if caller is not None and not own and not caller.may(job.registered_model_name, JOB_CANCEL):
            raise PermissionDenied(
                f"Cancelling batch job {job_id} needs {JOB_CANCEL.name} on registered model "
                f"'{job.registered_model_name}', or to be the one who submitted it "
                f"({job.submitter or 'nobody signed in'})."
            )
        if job.state.finished:
            return job
        by = f" by {caller.name}" if caller is not None else ""
        if job.node in (None, self.store.node):
            self.manager.cancel(job_id, f"Cancelled{by}.", wait_s=CANCEL_WAIT_S)
            return self.store.get(job_id) or job
        # Its own node cancels it within a second (control/node.py): wait to answer it ended.
        self.store.ask_cancel(job_id, f"Cancelled{by} (on node {self.store.node}).")
        deadline = time.monotonic() + CANCEL_WAIT_S
        now = job
        while not now.state.finished and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.store.get(job_id) or now
        return now

    def _resolve(self, ref: ModelRef) -> str:
        """The version `ref` names now: the job scores it even if an alias or stage moves."""
        try:
            if ref.version is not None:
                found = self.registry.get_model_version(ref.name, ref.version)
            elif ref.alias is not None:
                found = self.registry.get_model_version_by_alias(ref.name, ref.alias)
            else:
                found = self._by_stage(ref)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(f"The registry has no {ref}: {e.message}") from None
            if e.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                raise InvalidInput(f"The registry refused {ref}: {e.message}") from None
            raise NotReady(f"Could not read {ref} from the registry: {e.message}") from None
        if found.status not in (None, "READY"):
            raise InvalidInput(
                f"Version {found.version} of '{ref.name}' is {found.status}: wait until it is "
                "READY."
            )
        return str(found.version)

    def _by_stage(self, ref: ModelRef) -> ModelVersion:
        quoted = ref.name.replace("'", "\\'")
        versions = self.registry.search_model_versions(f"name = '{quoted}'")
        if ref.stage != "latest":
            versions = [v for v in versions if (v.current_stage or "None") == ref.stage]
        if not versions:
            where = "yet" if ref.stage == "latest" else f"in stage {ref.stage}"
            raise NotFound(f"The registry has no {ref}: no version of '{ref.name}' is {where}.")
        return max(versions, key=lambda v: int(v.version))


def _readable(job: JobRecord, caller: Caller | None) -> bool:
    return caller is None or caller.may(job.registered_model_name, JOB_READ)
