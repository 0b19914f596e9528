"""approval confirmations as their own step (issue 12.5)

Revision ID: 0002_hostile
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import sop_pipeline.models

revision: str = "0002_hostile"
down_revision: str | None = "0002_llm"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approval_confirmation",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("thread_ts", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("reacted_ts", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("approver", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("example_id", sa.Integer(), nullable=True),
        sa.Column("findings_text", sa.Text(), nullable=True),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
        sa.Column("created_at", sop_pipeline.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("posted_at", sop_pipeline.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("approval_confirmation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approval_confirmation_posted_at"), ["posted_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("approval_confirmation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_confirmation_posted_at"))
    op.drop_table("approval_confirmation")
