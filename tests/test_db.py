"""The schema is Alembic's, matches the tables in models.py, and upgrades safely."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, select

from sop_pipeline import audit, db
from sop_pipeline.library.search import is_index_table
from sop_pipeline.models import AuditEvent, ModelVersion, TrainingExample

# the newest revision: the chain ends here, whatever its name
HEAD = ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head()


def _not_search_index(name, type_, _parents) -> bool:  # noqa: ANN001
    # The full-text index (migration 0002_retrieval) is deliberately not a models.py table.
    return not (type_ == "table" and is_index_table(name))


def test_upgrade_creates_exactly_the_model_tables(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": _not_search_index})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == [], f"models.py and the migrations disagree: {diff}"
    assert db.current_revision(engine) == HEAD


def test_upgrade_is_safe_to_run_twice(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD


def test_two_processes_upgrading_at_once_both_succeed(pg_url: str) -> None:
    code = f"from sop_pipeline import db; db.upgrade(db.make_engine({pg_url!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert db.current_revision(db.make_engine(pg_url)) == HEAD


def test_times_come_back_as_utc(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with Session(engine) as session:
        audit.record(session, actor="U1", action="approve", subject="example:1")
        session.commit()
        event = session.exec(select(AuditEvent)).one()
    assert event.at.tzinfo is not None
    assert event.at.utcoffset() == UTC.utcoffset(datetime.now(UTC))


def test_one_example_per_sop_text_is_a_database_rule(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with Session(engine) as session:
        session.add(TrainingExample(prompt="p", sop_text="t", content_hash="h" * 64))
        session.commit()
        session.add(TrainingExample(prompt="p2", sop_text="t", content_hash="h" * 64))
        with pytest.raises(IntegrityError):
            session.commit()


def test_only_one_model_can_be_active(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    with Session(engine) as session:
        session.add(ModelVersion(model_id="ft:a", active_lock="active"))
        session.commit()
        session.add(ModelVersion(model_id="ft:b", active_lock="active"))
        with pytest.raises(IntegrityError):
            session.commit()


# --- SQLite: one writing transaction at a time (BEGIN IMMEDIATE, busy_timeout) ----------


def _audit_row(session: Session, n: int) -> None:
    audit.record(session, actor="U1", action="test", subject=f"write:{n}")
    session.flush()


def test_sqlite_writers_queue_for_each_other_and_none_is_lost(tmp_path) -> None:  # noqa: ANN001
    import threading

    engine = db.make_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    db.upgrade(engine)
    first_wrote, release_first = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with Session(engine) as session:
            _audit_row(session, 1)  # holds the write gate from here...
            first_wrote.set()
            release_first.wait(10)
            order.append("first commits")
            session.commit()  # ...to here

    def second() -> None:
        first_wrote.wait(10)
        with Session(engine) as session:
            _audit_row(session, 2)  # waits for the first transaction, then writes
            order.append("second wrote")
            session.commit()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_wrote.wait(10)
    threads[1].join(0.2)
    assert threads[1].is_alive() and order == []  # the second writer is queued, not failing
    release_first.set()
    for thread in threads:
        thread.join(10)

    assert order == ["first commits", "second wrote"]
    with Session(engine) as session:
        assert len(audit.events(session, action="test")) == 2
    engine.dispose()


def test_sqlite_a_session_that_read_before_another_writer_committed_still_writes(tmp_path) -> None:  # noqa: ANN001, E501
    """BEGIN IMMEDIATE (SQLAlchemy's pysqlite recipe): a session takes the write lock when it
    begins, so reading first and writing later never meets "database is locked"."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'recipe.db'}")
    db.upgrade(engine)
    with Session(engine) as reader_then_writer:
        assert audit.events(reader_then_writer, action="test") == []
        _audit_row(reader_then_writer, 1)
        reader_then_writer.commit()
    with Session(engine) as other:
        _audit_row(other, 2)
        other.commit()
    with Session(engine) as session:
        assert [e.subject for e in audit.events(session, action="test")] == ["write:1",
                                                                              "write:2"]
    engine.dispose()


def test_sqlite_writers_in_one_process_wait_for_its_one_writing_connection(tmp_path) -> None:  # noqa: ANN001, E501
    """SQLite lets one connection write at a time: a process's writing sessions share one
    connection (`make_write_engine`), so a second writer waits in SQLAlchemy's pool queue and
    is handed the connection when the first commits, instead of polling in SQLite's busy
    handler (sleeps of up to 100 ms each); twenty writers at once all land."""
    import threading

    engine = db.make_engine(f"sqlite:///{tmp_path / 'writer.db'}")
    db.upgrade(engine)
    writer = db.make_write_engine(engine)
    assert writer is not engine and writer.pool.size() == 1
    first_wrote, release_first = threading.Event(), threading.Event()

    def first() -> None:
        with Session(writer) as session:
            _audit_row(session, 0)
            first_wrote.set()
            release_first.wait(10)
            session.commit()

    def later(n: int) -> None:
        with Session(writer) as session:
            _audit_row(session, n)
            session.commit()

    holder = threading.Thread(target=first)
    holder.start()
    first_wrote.wait(10)
    others = [threading.Thread(target=later, args=(n,)) for n in range(1, 20)]
    for thread in others:
        thread.start()
    others[0].join(0.2)
    # everyone else is queued for the pool's one connection, none holds a second one
    assert others[0].is_alive() and writer.pool.checkedout() == 1
    with Session(engine.execution_options(sqlite_begin="DEFERRED")) as reader:
        assert audit.events(reader, action="test") == []  # readers never wait for writers
    release_first.set()
    for thread in [holder, *others]:
        thread.join(30)
    with Session(engine) as session:
        assert len(audit.events(session, action="test")) == 20
    engine.dispose()  # disposes the writer too
    assert writer.pool.checkedin() == 0


def test_only_a_sqlite_file_gets_a_writing_connection_of_its_own(pg_url: str) -> None:
    memory, server = db.make_engine("sqlite:///:memory:"), db.make_engine(pg_url)
    assert db.make_write_engine(memory) is memory  # another engine would be another database
    assert db.make_write_engine(server) is server  # PostgreSQL has row locks, not one writer
    memory.dispose()
    server.dispose()


def test_postgresql_reads_open_no_transaction_and_writes_still_roll_back(pg_url: str) -> None:
    """A read session runs in autocommit (no BEGIN, no ROLLBACK to wait for); the same pooled
    connection, handed to a writing session next, is transactional again."""
    from psycopg.pq import TransactionStatus

    engine = db.make_engine(pg_url, pool_size=1)
    db.upgrade(engine)
    reader = db.make_read_engine(engine)
    with Session(reader) as session:
        assert audit.events(session, action="test") == []
        dbapi = session.connection().connection.dbapi_connection
        assert dbapi.info.transaction_status == TransactionStatus.IDLE  # nothing was begun
    with Session(engine) as session:  # the pool's one connection, reset for writing
        audit.record(session, actor="U1", action="test", subject="reads")
        session.flush()
        dbapi = session.connection().connection.dbapi_connection
        assert dbapi.info.transaction_status == TransactionStatus.INTRANS
        session.rollback()
    with Session(reader) as session:
        assert audit.events(session, action="test") == []  # the rolled-back row never landed
    engine.dispose()


def test_head_revision_is_alembics_head() -> None:
    assert db.HEAD_REVISION == HEAD


def test_a_database_already_at_head_is_not_upgraded_and_alembic_is_never_imported(
    database_url: str,
) -> None:
    """A restart (the bot upgrades at every start) reads alembic_version and stops there:
    Alembic's import is 12 MB of the bot's memory. A new database is upgraded as before."""
    code = ("import sys; from sop_pipeline import db; e = db.make_engine(sys.argv[1]); "
            "db.upgrade(e); print(db.stored_revision(e), 'alembic' in sys.modules)")

    def start() -> str:
        return subprocess.run([sys.executable, "-c", code, database_url], check=True,
                              capture_output=True, text=True).stdout.split()

    assert start() == [HEAD, "True"]  # a new database: Alembic creates and upgrades it
    assert start() == [HEAD, "False"]  # a restart: one SELECT, no Alembic
