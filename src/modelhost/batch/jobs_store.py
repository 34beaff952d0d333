"""Batch jobs in the platform's state database: the `batch_jobs` table.

The table lives beside the serving tables (control/store.py) in the same database, made by
its migrations (modelhost/migrations). With several nodes on one database, each job runs on the
node that took it (`node`); a cancel asked on another node is left in `cancel_reason` for the
job's own node to carry out.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from modelhost.batch.jobs import JobOptions, JobState
from modelhost.control.node import nodes

metadata = sa.MetaData()

batch_jobs = sa.Table(
    "batch_jobs",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("registered_model_name", sa.String, nullable=False, index=True),
    sa.Column("version", sa.String, nullable=False),
    sa.Column("model_ref", sa.String, nullable=False),  # as the caller named it (an alias...)
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("options", sa.Text, nullable=False),  # JSON: JobOptions
    sa.Column("state", sa.String, nullable=False, index=True),
    sa.Column("rows_done", sa.Integer, nullable=False, default=0),
    sa.Column("rows_total", sa.Integer, nullable=True),
    sa.Column("rows_failed", sa.Integer, nullable=False, default=0),
    sa.Column("rows_per_s", sa.Float, nullable=False, default=0.0),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("errors_file", sa.Text, nullable=True),
    sa.Column("submitter", sa.String, nullable=True),  # None: auth is off
    sa.Column("pid", sa.Integer, nullable=True),  # the job's process (its group's leader)
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("node", sa.String, nullable=True),  # the node it runs on; None: the only one
    sa.Column("cancel_reason", sa.Text, nullable=True),  # asked on another node
)

_UNFINISHED = (JobState.PENDING.value, JobState.RUNNING.value)
# The fields of a progress report (batch/jobs_manager.py reads them from the runner).
PROGRESS = ("rows_done", "rows_total", "rows_failed", "rows_per_s", "message", "errors_file")


@dataclass(frozen=True)
class JobRecord:
    """One row of `batch_jobs`."""

    id: str
    registered_model_name: str
    version: str
    model_ref: str
    input: str
    output: str
    options: JobOptions
    state: JobState = JobState.PENDING
    rows_done: int = 0
    rows_total: int | None = None
    rows_failed: int = 0
    rows_per_s: float = 0.0
    message: str | None = None
    errors_file: str | None = None
    submitter: str | None = None
    pid: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    node: str | None = None
    cancel_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The job as the API shows it: times in milliseconds, as MLflow's are."""
        ms = lambda t: None if t is None else int(t * 1000)  # noqa: E731
        return {
            "job_id": self.id,
            "registered_model_name": self.registered_model_name,
            "version": self.version,
            "model_uri": f"models:/{self.registered_model_name}/{self.version}",
            "requested_model_uri": self.model_ref,
            "input": self.input,
            "output": self.output,
            "options": self.options.to_json(),
            "state": self.state.value,
            "rows_done": self.rows_done,
            "rows_total": self.rows_total,
            "rows_failed": self.rows_failed,
            "rows_per_s": round(self.rows_per_s, 1),
            "message": self.message,
            "errors_file": self.errors_file,
            "submitter": self.submitter,
            "created_at": ms(self.created_at),
            "started_at": ms(self.started_at),
            "finished_at": ms(self.finished_at),
            "node": self.node,
        }


def new_job(**fields: Any) -> JobRecord:
    """A job just submitted: PENDING, with an id of its own."""
    return JobRecord(id=secrets.token_hex(8), created_at=time.time(), **fields)


class JobStore:
    """The jobs, in the state database whose engine it is given (SQLite or PostgreSQL)."""

    def __init__(self, engine: sa.Engine, node: str | None = None) -> None:
        self.engine = engine
        self.node = node  # this node's name: the jobs it adds run here

    def add(self, job: JobRecord) -> None:
        with self.engine.begin() as db:
            db.execute(batch_jobs.insert().values({**_row(job), "node": self.node}))

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(batch_jobs).where(batch_jobs.c.id == job_id)).first()
        return _record(row._mapping) if row else None

    def list(self, name: str | None = None, limit: int = 1000) -> list[JobRecord]:
        """Newest first; of one registered model, or of all."""
        query = sa.select(batch_jobs).order_by(batch_jobs.c.created_at.desc()).limit(limit)
        if name is not None:
            query = query.where(batch_jobs.c.registered_model_name == name)
        with self.engine.connect() as db:
            return [_record(row._mapping) for row in db.execute(query)]

    def update(self, job_id: str, **fields: Any) -> None:
        if "state" in fields:
            fields["state"] = JobState(fields["state"]).value
        with self.engine.begin() as db:
            db.execute(batch_jobs.update().where(batch_jobs.c.id == job_id).values(**fields))

    def finish(self, job_id: str, state: JobState, message: str | None, **fields: Any) -> bool:
        """End a job that has not ended yet; False if it already had."""
        with self.engine.begin() as db:
            done = db.execute(
                batch_jobs.update()
                .where(batch_jobs.c.id == job_id)
                .where(batch_jobs.c.state.in_(_UNFINISHED))
                .values(state=state.value, message=message, finished_at=time.time(), **fields)
            )
            return done.rowcount > 0

    def unfinished(self) -> list[JobRecord]:
        """This node's jobs PENDING or RUNNING: at start, those its previous run left."""
        with self.engine.connect() as db:
            return [_record(row._mapping) for row in db.execute(self._own_unfinished())]

    def ask_cancel(self, job_id: str, reason: str) -> None:
        """Ask the node that runs the job to cancel it (it is another node)."""
        with self.engine.begin() as db:
            db.execute(
                batch_jobs.update()
                .where(batch_jobs.c.id == job_id, batch_jobs.c.state.in_(_UNFINISHED))
                .values(cancel_reason=reason)
            )

    def cancels_asked(self) -> dict[str, str]:
        """This node's unfinished jobs another node asked to cancel: id -> why."""
        query = self._own_unfinished().where(batch_jobs.c.cancel_reason.is_not(None))
        with self.engine.connect() as db:
            return {row.id: row.cancel_reason for row in db.execute(query)}

    def of_gone_nodes(self, seen_before: float) -> list[JobRecord]:
        """Unfinished jobs of other nodes not seen since `seen_before`: they died with them."""
        query = (
            sa.select(batch_jobs)
            .join(nodes, nodes.c.name == batch_jobs.c.node)
            .where(
                batch_jobs.c.state.in_(_UNFINISHED),
                batch_jobs.c.node != self.node,
                nodes.c.seen_at < seen_before,
            )
        )
        with self.engine.connect() as db:
            return [_record(row._mapping) for row in db.execute(query)]

    def _own_unfinished(self) -> sa.Select:
        return sa.select(batch_jobs).where(
            batch_jobs.c.state.in_(_UNFINISHED),
            sa.or_(batch_jobs.c.node == self.node, batch_jobs.c.node.is_(None)),
        )


def _row(job: JobRecord) -> dict[str, Any]:
    row = dict(job.__dict__)
    row["options"] = json.dumps(job.options.to_json())
    row["state"] = job.state.value
    return row


def _record(row: Any) -> JobRecord:
    fields = dict(row)
    fields["options"] = JobOptions(**json.loads(fields["options"]))
    fields["state"] = JobState(fields["state"])
    return JobRecord(**fields)
