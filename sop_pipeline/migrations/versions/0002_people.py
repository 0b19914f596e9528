"""training_run: the admin-channel message of each run (ts and the state it showed)

Revision ID: 0002_people
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002_people"
down_revision: str | None = "0002_hostile"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_run") as batch:
        batch.add_column(sa.Column("admin_message_ts",
                                   sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch.add_column(sa.Column("admin_message_state",
                                   sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_run") as batch:
        batch.drop_column("admin_message_state")
        batch.drop_column("admin_message_ts")
