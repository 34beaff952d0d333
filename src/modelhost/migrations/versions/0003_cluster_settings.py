"""A served model's cluster settings (`--engine ray`): what each replica of its model server
reserves on a node (`cpus`, `memory_mb`) and how many replicas it runs (`min_replicas`,
`max_replicas`). NULL, as every row made before this revision holds: the platform's default.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("serving", sa.Column("cpus", sa.Float, nullable=True))
    op.add_column("serving", sa.Column("memory_mb", sa.Integer, nullable=True))
    op.add_column("serving", sa.Column("min_replicas", sa.Integer, nullable=True))
    op.add_column("serving", sa.Column("max_replicas", sa.Integer, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("modelhost's state database is only migrated forward.")
