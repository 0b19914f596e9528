"""training_example.eval_point: the evaluation hold-out tested in SQL (issue #15)

Every count (approval confirmations, status, App Home, the retrain check) tells held-out
examples apart. On SQLite that took a Python function call per approved row, SHA-256 of seed
and content hash: at 10,000 examples 8.7 of a count's 12.4 ms, taking the interpreter lock
back once per row while drafts wanted it. The number is now stored with the example for the
default EVAL_SEED (`models.eval_point`); every existing row is backfilled here, in batches,
with that same function. The counts' index gains the column, so they still read no text.

Only columns and indexes are added and dropped, never the table recreated: on SQLite a
recreated training_example would lose the search-index triggers of 0002_retrieval, which do
not watch eval_point.

Revision ID: 0004_eval_point
Revises: 0003_wording_hash
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sop_pipeline.models import eval_point

revision: str = "0004_eval_point"
down_revision: str | None = "0003_wording_hash"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

BATCH = 500  # rows read and written per round trip

_examples = sa.table(
    "training_example",
    sa.column("id", sa.Integer),
    sa.column("content_hash", sa.String),
    sa.column("eval_point", sa.BigInteger),
)


def upgrade() -> None:
    op.add_column("training_example", sa.Column("eval_point", sa.BigInteger(), nullable=True))
    connection = op.get_bind()
    last_id, total = 0, 0
    while True:
        rows = connection.execute(
            sa.select(_examples.c.id, _examples.c.content_hash)
            .where(_examples.c.id > last_id).order_by(_examples.c.id).limit(BATCH)
        ).all()
        if not rows:
            break
        connection.execute(
            sa.update(_examples).where(_examples.c.id == sa.bindparam("row_id"))
            .values(eval_point=sa.bindparam("point")),
            [{"row_id": row_id, "point": eval_point(digest)} for row_id, digest in rows],
        )
        last_id, total = rows[-1][0], total + len(rows)
    if total:
        log.info("Stored the evaluation hold-out point of %d training example(s).", total)
    op.drop_index("ix_training_example_status_hash", table_name="training_example")
    op.create_index("ix_training_example_status_point", "training_example",
                    ["status", "eval_point", "content_hash", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_training_example_status_point", table_name="training_example")
    op.create_index("ix_training_example_status_hash", "training_example",
                    ["status", "content_hash", "id"], unique=False)
    # SQLite 3.35+ drops a column in place (no table copy), so the search triggers stay.
    op.drop_column("training_example", "eval_point")
