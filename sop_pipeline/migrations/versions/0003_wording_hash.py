"""training_example.wording_hash and legacy_text: finding SOPs stored renumbered (issue #13)

Examples approved before the verbatim training text (issue #13) may be stored renumbered.
`wording_hash` is the same for that text and the verbatim one, so re-importing or
re-approving the SOP restores the stored example instead of adding a second one; every
existing row is backfilled here, in batches, with the same Python function the approval path
uses. `legacy_text` is true for every row that exists now (written before verbatim text) and
false for rows the approval path stores from now on: only legacy rows are ever rewritten.

The columns are added with ALTER TABLE ADD COLUMN, never by recreating the table: on SQLite a
recreated training_example would lose the search-index triggers of 0002_retrieval. The
backfill writes only wording_hash, which those triggers do not watch.

Revision ID: 0003_wording_hash
Revises: 0002_retrieval
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from sop_pipeline.sop_format.wording import wording_fingerprint

revision: str = "0003_wording_hash"
down_revision: str | None = "0002_retrieval"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

BATCH = 500  # rows read and written per round trip; texts are a few KB each

_examples = sa.table(
    "training_example",
    sa.column("id", sa.Integer),
    sa.column("sop_text", sa.Text),
    sa.column("wording_hash", sa.String),
)


def upgrade() -> None:
    op.add_column("training_example", sa.Column(
        "wording_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.create_index(op.f("ix_training_example_wording_hash"), "training_example",
                    ["wording_hash"], unique=False)
    # Every row there is now was written before verbatim text; new rows say false.
    op.add_column("training_example", sa.Column(
        "legacy_text", sa.Boolean(), server_default=sa.true(), nullable=False))
    connection = op.get_bind()
    last_id, total = 0, 0
    while True:
        rows = connection.execute(
            sa.select(_examples.c.id, _examples.c.sop_text)
            .where(_examples.c.id > last_id).order_by(_examples.c.id).limit(BATCH)
        ).all()
        if not rows:
            break
        connection.execute(
            sa.update(_examples).where(_examples.c.id == sa.bindparam("row_id"))
            .values(wording_hash=sa.bindparam("digest")),
            [{"row_id": row_id, "digest": wording_fingerprint(text)} for row_id, text in rows],
        )
        last_id, total = rows[-1][0], total + len(rows)
    if total:
        log.info("Computed the wording fingerprint of %d training example(s).", total)


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (no table copy), so the search triggers stay.
    op.drop_column("training_example", "legacy_text")
    op.drop_index(op.f("ix_training_example_wording_hash"), table_name="training_example")
    op.drop_column("training_example", "wording_hash")
