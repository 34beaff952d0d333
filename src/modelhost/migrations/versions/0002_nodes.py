"""Several nodes on one database: the nodes themselves, what they share, who recorded what.

- `nodes`: each `modelhost up` by name, with when it last said it is alive;
- `events.node` and `batch_jobs.node`: the node that recorded an event or runs a job (None:
  recorded before this revision, by the only node there was);
- `batch_jobs.cancel_reason`: a cancel asked on one node, carried out by the job's own node;
- `sessions`: browser sign-ins, which any node behind a balancer must know;
- `generations`: counters each change moves on (`auth`: users, tokens, grants, sessions;
  `serving`: served models and their settings), so every node knows, with one small read,
  when to read them again.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("url", sa.String, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.add_column("events", sa.Column("node", sa.String, nullable=True))
    op.add_column("batch_jobs", sa.Column("node", sa.String, nullable=True))
    op.add_column("batch_jobs", sa.Column("cancel_reason", sa.Text, nullable=True))
    op.create_table(
        "sessions",
        sa.Column("digest", sa.String, primary_key=True),
        sa.Column("principal", sa.String, nullable=False),
        sa.Column("token_hash", sa.String, nullable=False),
        sa.Column("ends_at", sa.Float, nullable=False, index=True),
    )
    generations = op.create_table(
        "generations",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.bulk_insert(generations, [{"name": "auth", "value": 0}, {"name": "serving", "value": 0}])


def downgrade() -> None:
    raise NotImplementedError("modelhost's state database is only migrated forward.")
