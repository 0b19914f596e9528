"""Database engine, sessions and schema upgrades (Alembic).

Sessions are created by callers and passed explicitly; nothing here runs at import time.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlmodel import Session, create_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_UPGRADE_LOCK = 7_310_001  # advisory lock id: one `db upgrade` at a time per database
SQLITE_BUSY_TIMEOUT_SECONDS = 30
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class SQLiteWriteGate:
    """One writing transaction at a time per process, queued on a lock instead of on SQLite.

    SQLite allows one writer; the others wait in its busy handler, which sleeps in growing
    steps (1, 2, 5 … 100 ms) and so leaves the database idle while 50 drafting threads each
    wait for a sub-millisecond commit: under a burst, storing a draft took 0.4 s. Here a
    transaction takes the gate at its first write statement (exactly when SQLite takes its
    write lock) and gives it back at commit or rollback, and the next writer is woken at once.
    Other processes on the same file still meet SQLite's own lock and busy timeout.
    """

    def __init__(self, timeout: float = SQLITE_BUSY_TIMEOUT_SECONDS) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # the DBAPI connection holding the gate
        self.timeout = timeout

    @property
    def held(self) -> bool:
        """A transaction in this process is writing right now."""
        return self._holder is not None

    def before_write(self, dbapi_conn: object) -> None:
        key = _raw_id(dbapi_conn)
        if self._holder == key:
            return
        # A wait that times out (a transaction held open for minutes) falls through to SQLite,
        # which then waits its own busy timeout and reports "database is locked" as before.
        if self._lock.acquire(timeout=self.timeout):
            self._holder = key

    def after_transaction(self, dbapi_conn: object) -> None:
        if self._holder is not None and self._holder == _raw_id(dbapi_conn):
            self._holder = None
            self._lock.release()

    def install(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _gate_writes(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
            if statement.lstrip()[:7].upper().startswith(_WRITES):
                self.before_write(conn.connection)

        # Given back after SQLite's COMMIT or ROLLBACK has run (the "commit" event comes
        # before it). The dialect is this engine's own instance; the pool's reset on checkin
        # also rolls back through it.
        dialect = engine.dialect
        for name in ("do_commit", "do_rollback"):
            setattr(dialect, name, self._releasing(getattr(dialect, name)))

        @event.listens_for(engine, "checkin")
        def _returned(dbapi_conn, _record) -> None:  # noqa: ANN001
            self.after_transaction(dbapi_conn)

        @event.listens_for(engine, "invalidate")
        def _broken(dbapi_conn, _record, _exception) -> None:  # noqa: ANN001
            self.after_transaction(dbapi_conn)  # e.g. a disk error: its transaction is gone

    def _releasing(self, end_transaction):  # noqa: ANN001, ANN202
        def wrapped(dbapi_conn) -> None:  # noqa: ANN001
            try:
                end_transaction(dbapi_conn)
            finally:
                self.after_transaction(dbapi_conn)

        return wrapped


_WRITE_GATES: weakref.WeakKeyDictionary[Engine, SQLiteWriteGate] = weakref.WeakKeyDictionary()


def write_gate(engine: Engine) -> SQLiteWriteGate | None:
    """The SQLite engine's write gate (None for PostgreSQL, which has row locks instead)."""
    return _WRITE_GATES.get(engine)


def _raw_id(connection: object) -> int:
    """The DBAPI connection's identity, whether given raw or behind the pool's proxy."""
    return id(getattr(connection, "dbapi_connection", None) or connection)


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL and a busy timeout so threads and processes share it."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        _WRITE_GATES[engine] = gate = SQLiteWriteGate()
        gate.install(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at our packaged migrations, bound to this engine."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run twice and from two processes at once."""
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
