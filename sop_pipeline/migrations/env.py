"""Alembic environment: uses the engine/connection handed over by `sop_pipeline.db`."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import sop_pipeline.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from sop_pipeline.library.search import is_index_table

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = context.config.attributes["engine"]
        with engine.begin() as conn:
            _run(conn)
    else:
        _run(connection)


def _include_name(name, type_, _parent_names) -> bool:  # noqa: ANN001
    # The search index (FTS5 or tsvector table, built by 0002_retrieval) is not a model table.
    return not (type_ == "table" and is_index_table(name))


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
