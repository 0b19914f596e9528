"""Migration 0002_llm: snapshot files written by earlier versions move into the database,
and the ones already gone are named (issue 18.1)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from sop_pipeline import db


def _insert_old_snapshot(engine: sa.Engine, content_hash: str, train: str | None,
                         validation: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO dataset_snapshot (content_hash, example_ids, n_train, n_validation, "
            "token_count, estimated_epochs, estimated_cost_usd, system_prompt, train_path, "
            "validation_path, created_at) VALUES (:h, '[]', 1, 0, 0, 0, 0, '', :t, :v, "
            "CURRENT_TIMESTAMP)"), {"h": content_hash, "t": train, "v": validation})


def test_snapshot_files_move_into_the_database_and_missing_ones_are_named(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine, "0001")
    train = tmp_path / "snapshots" / "aaa" / "train.jsonl"
    validation = train.with_name("validation.jsonl")
    train.parent.mkdir(parents=True)
    train.write_bytes(b'{"messages": []}\n')
    validation.write_bytes(b'{"messages": [1]}\n')
    gone = tmp_path / "snapshots" / "bbb" / "train.jsonl"
    _insert_old_snapshot(engine, "a" * 64, str(train), str(validation))
    _insert_old_snapshot(engine, "b" * 64, str(gone), None)

    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        db.upgrade(engine, "0002_llm")

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT content_hash, train_jsonl_gz, validation_jsonl_gz FROM dataset_snapshot "
            "ORDER BY content_hash")).all()
    assert gzip.decompress(rows[0][1]) == train.read_bytes()
    assert gzip.decompress(rows[0][2]) == validation.read_bytes()
    assert rows[1][1] is None and rows[1][2] is None
    assert f"snapshot #2: {gone}" in caplog.text
    assert "Moved 2 snapshot(s) into the database; 1 file(s) were missing." in caplog.text

    db_down(engine)
    engine.dispose()


def db_down(engine: sa.Engine) -> None:
    """The migration downgrades (the bytes are dropped; paths come back empty)."""
    from alembic import command

    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("dataset_snapshot")}
    assert "train_path" in columns and "train_jsonl_gz" not in columns
