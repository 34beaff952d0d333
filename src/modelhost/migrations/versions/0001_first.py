"""The schema before migrations: served models, events, users, tokens, grants, batch jobs.

A database made by a modelhost from before migrations has some of these tables, perhaps
without the columns added since (each nullable): they are made or completed here, so it opens
and serves as it did.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

schema = sa.MetaData()
sa.Table(
    "serving",
    schema,
    sa.Column("registered_model_name", sa.String, primary_key=True),
    sa.Column("enabled_at", sa.Float, nullable=False),
    sa.Column("env_manager", sa.String, nullable=True),
    sa.Column("workers", sa.Integer, nullable=True),
    sa.Column("max_batch_size", sa.Integer, nullable=True),
    sa.Column("max_batch_delay_ms", sa.Float, nullable=True),
    sa.Column("timeout_s", sa.Float, nullable=True),
    sa.Column("scale_to_zero_after", sa.Float, nullable=True),
    sa.Column("tags", sa.Text, nullable=True),
)
sa.Table(
    "events",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.Float, nullable=False, index=True),
    sa.Column("registered_model_name", sa.String, nullable=False, index=True),
    sa.Column("endpoint_version_name", sa.String, nullable=True),
    sa.Column("message", sa.String, nullable=False),
    sa.Column("actor", sa.String, nullable=True),
)
sa.Table(
    "principals",
    schema,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)
sa.Table(
    "tokens",
    schema,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("principal", sa.String, sa.ForeignKey("principals.name"), nullable=False),
    sa.Column("hash", sa.String, nullable=False, unique=True),
    sa.Column("comment", sa.String, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)
sa.Table(
    "grants",
    schema,
    sa.Column("principal", sa.String, sa.ForeignKey("principals.name"), primary_key=True),
    sa.Column("target", sa.String, primary_key=True),
    sa.Column("level", sa.String, nullable=False),
    sa.Column("granted_by", sa.String, nullable=True),
    sa.Column("granted_at", sa.Float, nullable=False),
)
sa.Table(
    "batch_jobs",
    schema,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("registered_model_name", sa.String, nullable=False, index=True),
    sa.Column("version", sa.String, nullable=False),
    sa.Column("model_ref", sa.String, nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("state", sa.String, nullable=False, index=True),
    sa.Column("rows_done", sa.Integer, nullable=False),
    sa.Column("rows_total", sa.Integer, nullable=True),
    sa.Column("rows_failed", sa.Integer, nullable=False),
    sa.Column("rows_per_s", sa.Float, nullable=False),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("errors_file", sa.Text, nullable=True),
    sa.Column("submitter", sa.String, nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
)


def upgrade() -> None:
    db = op.get_bind()
    schema.create_all(db)  # the tables missing, with their indexes; existing ones are kept
    inspector = sa.inspect(db)
    for table in schema.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                op.add_column(table.name, sa.Column(column.name, column.type))  # nullable


def downgrade() -> None:
    raise NotImplementedError("modelhost's state database is only migrated forward.")
