"""snapshots in the database: the JSONL bytes move from <data_dir>/snapshots into the row

Each snapshot's train/validation files are read from the paths the row recorded, stored
gzip-compressed in the row, and the path columns are dropped: any instance sharing the
database can then upload them. A file that is already gone is named in a warning (and the
row keeps no data; a run on it fails with a sentence saying to retrain with --force).

Revision ID: 0002_llm
Revises: 0001
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0002_llm"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

_snapshots = sa.table(
    "dataset_snapshot",
    sa.column("id", sa.Integer),
    sa.column("train_path", sa.String),
    sa.column("validation_path", sa.String),
    sa.column("train_jsonl_gz", sa.LargeBinary),
    sa.column("validation_jsonl_gz", sa.LargeBinary),
)


def _read(path: str | None) -> tuple[bytes | None, bool]:
    """(gzip bytes or None, whether a recorded file was missing)."""
    if not path:
        return None, False
    try:
        return gzip.compress(Path(path).read_bytes(), mtime=0), False
    except OSError:
        return None, True


def upgrade() -> None:
    with op.batch_alter_table("dataset_snapshot") as batch:
        batch.add_column(sa.Column("train_jsonl_gz", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("validation_jsonl_gz", sa.LargeBinary(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_snapshots.c.id, _snapshots.c.train_path, _snapshots.c.validation_path)
    ).all()
    missing: list[str] = []
    for snapshot_id, train_path, validation_path in rows:
        train, train_missing = _read(train_path)
        validation, validation_missing = _read(validation_path)
        missing += [f"snapshot #{snapshot_id}: {path}" for path, gone in (
            (train_path, train_missing), (validation_path, validation_missing)) if gone]
        connection.execute(
            sa.update(_snapshots).where(_snapshots.c.id == snapshot_id)
            .values(train_jsonl_gz=train, validation_jsonl_gz=validation)
        )
    for line in missing:
        log.warning("Snapshot file missing, not moved into the database: %s", line)
    if rows:
        log.info("Moved %d snapshot(s) into the database; %d file(s) were missing.",
                 len(rows), len(missing))
    with op.batch_alter_table("dataset_snapshot") as batch:
        batch.drop_column("train_path")
        batch.drop_column("validation_path")


def downgrade() -> None:
    # The bytes cannot go back to files here (the data directory is not known to Alembic):
    # export them first with `sop-bot dataset export` if the old version must use them.
    with op.batch_alter_table("dataset_snapshot") as batch:
        batch.add_column(sa.Column("train_path", sa.String(), nullable=True))
        batch.add_column(sa.Column("validation_path", sa.String(), nullable=True))
        batch.drop_column("validation_jsonl_gz")
        batch.drop_column("train_jsonl_gz")
