"""Database engine, sessions and schema upgrades (Alembic).

Sessions are created by callers and passed explicitly; nothing here runs at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event, text
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest migration (tests/test_db.py keeps it equal to Alembic's head): a database already
# there is not upgraded, so a restart never imports Alembic (12 MB of the bot's memory).
HEAD_REVISION = "0004_eval_point"
_PG_UPGRADE_LOCK = 7_310_001  # advisory lock id: one `db upgrade` at a time per database
SQLITE_BUSY_TIMEOUT_SECONDS = 30


DEFAULT_POOL_SIZE = 20  # CLI and tools; the bot passes Settings.database_pool_size
DEFAULT_POOL_TIMEOUT_SECONDS = 10.0


def make_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE,
                pool_timeout: float = DEFAULT_POOL_TIMEOUT_SECONDS) -> Engine:
    """Create the engine; SQLite gets WAL and a busy timeout so threads and processes share it.

    The pool has a connection for every worker thread (`pool_size`, no overflow): a thread
    holds one connection at a time, so an approval never queues behind drafts for one. A
    request that still finds none within `pool_timeout` seconds fails (sqlalchemy's
    TimeoutError) instead of hanging for 30 s.
    """
    pool = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if path == ":memory:" or not path:
            pool = {}  # one in-memory database per connection: SQLAlchemy's own pool choice
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                               **pool)
        _sqlite_recipe(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def make_write_engine(engine: Engine) -> Engine:
    """The engine writing sessions use (`Services.session`). On a SQLite file it is a second
    engine whose pool holds one connection: SQLite lets one connection write at a time, so
    a process's writers queue in SQLAlchemy's pool (first come, first served, handed the
    connection the moment it is returned) instead of polling in SQLite's busy handler, which
    sleeps in steps growing to 100 ms and so lets a transaction of 2 ms keep the next writer
    waiting a second under a burst. Other processes still wait in `busy_timeout`. Elsewhere
    (PostgreSQL, in-memory SQLite) it is `engine` itself. Disposing `engine` disposes it."""
    path = engine.url.database or ""
    if engine.dialect.name != "sqlite" or path in ("", ":memory:"):
        return engine
    writer = create_engine(engine.url, connect_args={"check_same_thread": False,
                                                     "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                           pool_size=1, max_overflow=0,
                           pool_timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
    _sqlite_recipe(writer)
    event.listen(engine, "engine_disposed", lambda _engine: writer.dispose())
    return writer


def make_read_engine(engine: Engine) -> Engine:
    """The engine read-only sessions use (`Services.read_session`, drafts' library reads).

    SQLite: transactions begin DEFERRED, so a reader never queues for the write lock.
    PostgreSQL: DBAPI autocommit. At READ COMMITTED each statement takes its own snapshot
    inside a transaction too, so nothing a reader sees changes; what goes is the BEGIN and
    the ROLLBACK, two of a read's four round trips with the pool's ping (every round trip
    is a wait to take the interpreter's lock back while a burst keeps it busy)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="DEFERRED")
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def _sqlite_recipe(engine: Engine) -> None:
    """SQLAlchemy's documented pysqlite recipe ("Serializable isolation / Savepoints /
    Transactional DDL"): the driver's own implicit BEGIN is switched off and SQLAlchemy begins
    every transaction itself. It begins with BEGIN IMMEDIATE, so a session that will write
    takes SQLite's one write lock up front and waits in `busy_timeout` for it, instead of
    failing with "database is locked" when it upgrades from reading; WAL lets readers in
    other processes carry on meanwhile. `execution_options(sqlite_begin="DEFERRED")` opts a
    read-only connection out."""

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # autocommit at the driver: BEGIN is ours
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # noqa: ANN001
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at our packaged migrations, bound to this engine."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run twice and from two processes at once."""
    if revision == "head" and stored_revision(engine) == HEAD_REVISION:
        return  # nothing to do, and nothing of Alembic imported
    from alembic import command

    cfg = alembic_config(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_UPGRADE_LOCK})
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_UPGRADE_LOCK})
                conn.commit()
        return
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def stored_revision(engine: Engine) -> str | None:
    """The revision in the alembic_version table, read without Alembic; None when the table
    is missing (a new database) or holds no single revision."""
    try:
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except Exception:  # noqa: BLE001 - no table yet: Alembic creates it and upgrades
        return None
    return rows[0][0] if len(rows) == 1 else None


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never upgraded."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except Exception:
            session.rollback()
            raise
