"""A pool that cannot starve approvals: drafts take turns at the database (DB_DRAFT_CONNECTIONS),
the pool has connections of its own for everything else, a draft with no turn fails with a
sentence, an approval still goes through."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import event
from sqlmodel import select

from sop_pipeline.examples import approve_sop
from sop_pipeline.generation import run_generation, start_generation
from sop_pipeline.generation.generate import generate
from sop_pipeline.models import Generation
from sop_pipeline.services import DatabaseBusy, build_services
from tests.conftest import DATA_DIR, make_settings

BUSY = "The database is busy with other drafts right now"


@pytest.fixture
def small_pool(database_url, tmp_path, fake_openai):  # noqa: ANN001, ANN201
    settings = make_settings(database_url, tmp_path / "data", openai_base_url=fake_openai.base_url,
                             db_draft_connections=3, bot_quick_threads=2,
                             db_pool_timeout_seconds=0.01)
    services = build_services(settings)
    yield services
    services.engine.dispose()


def test_pool_size_follows_the_draft_turns_and_the_quick_threads(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path / "d", bot_worker_threads=64,
                             bot_quick_threads=3, db_draft_connections=5)
    assert settings.database_pool_size == 12  # drafts' turns + a connection per quick thread + 4
    services = build_services(settings)
    try:
        assert services.engine.pool.size() == 12
        assert services.engine.pool._max_overflow == 0  # noqa: SLF001 - no surprise extras
        assert services.draft_connections == 5
    finally:
        services.engine.dispose()
    assert make_settings(database_url, tmp_path / "d", db_pool_size=7).database_pool_size == 7


def test_a_small_pool_still_leaves_connections_to_approvals(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path / "d", db_pool_size=4,
                             db_draft_connections=8)
    services = build_services(settings)
    try:
        assert services.draft_connections == 2  # 4 connections, 2 of them kept for the rest
    finally:
        services.engine.dispose()


def test_drafts_take_turns_and_leave_connections_for_approvals(small_pool):
    services = small_pool
    text = (DATA_DIR / "sops" / "06_balance_calibration.md").read_text()
    with ExitStack() as drafts:
        for _ in range(services.draft_connections):  # every turn taken, each on a connection
            session = drafts.enter_context(services.draft_session())
            session.exec(select(Generation)).all()
        with pytest.raises(DatabaseBusy, match=BUSY):
            services.draft_session()
        with pytest.raises(DatabaseBusy, match=BUSY):
            services.draft_session(write=True)
        # an approval still gets a connection at once and is stored
        with services.session() as session:
            result = approve_sop(session, services.template, services.settings, text=text,
                                 approver="U1", slack_channel="C1", slack_ts="1.1")
            session.commit()
        assert result.status == "approved"
    with services.draft_session() as session:  # turns come back when drafts close
        assert session.connection() is not None


def test_a_draft_waits_for_its_turn(small_pool, fake_openai):
    """More drafts than turns: each waits (within DB_POOL_TIMEOUT_SECONDS) and all complete."""
    services = small_pool
    services.settings.db_pool_timeout_seconds = 30.0
    results: list[str] = []

    def draft() -> None:
        results.append(generate(services, "Write an SOP for cleaning of the tablet press",
                                "U1").status)

    threads = [threading.Thread(target=draft) for _ in range(services.draft_connections * 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == ["completed"] * len(threads)


def test_a_draft_without_a_turn_fails_with_a_sentence(small_pool, fake_openai):
    services = small_pool
    row = start_generation(services, "Write an SOP for cleaning of the tablet press", "U1")
    assert row.id is not None
    with ExitStack() as drafts:
        for _ in range(services.draft_connections):
            drafts.enter_context(services.draft_session())
        with pytest.raises(DatabaseBusy, match=BUSY):  # storing a new request
            start_generation(services, "Write an SOP for cleaning of the tablet press", "U1")
        result = run_generation(services, row.id)  # running a stored one
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith(BUSY)
    assert fake_openai.requests_to("/chat/completions", "POST") == []
    # with turns free again, the stored request runs
    assert run_generation(services, row.id).status == "completed"


def test_a_run_takes_one_turn_to_claim_and_read_the_library_and_one_to_finish(
        small_pool, fake_openai):  # noqa: ANN001
    services = small_pool
    row = start_generation(services, "Write an SOP for cleaning of the tablet press", "U1")
    assert row.id is not None
    slots = services._take_turn()  # noqa: SLF001 - the drafts' turns, counted below
    slots.release()
    taken: list[int] = []
    acquire = slots.acquire

    def counting_acquire(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        taken.append(1)
        return acquire(*args, **kwargs)

    slots.acquire = counting_acquire  # type: ignore[method-assign]
    assert run_generation(services, row.id).status == "completed"
    assert len(taken) == 2


def test_a_claim_and_an_outcome_are_one_statement_each(small_pool, fake_openai):  # noqa: ANN001
    """A run touches its row twice: the claim (one UPDATE that returns the row) and the
    outcome (one UPDATE). On PostgreSQL both run in autocommit: no BEGIN and no COMMIT, each
    a round trip in which the turn's holder waits to take back the interpreter's lock."""
    services = small_pool
    row = start_generation(services, "Write an SOP for cleaning of the tablet press", "U1")
    assert row.id is not None
    touched: list[tuple[str, bool]] = []
    postgres = services.engine.dialect.name == "postgresql"

    def after(conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if " generation " in f" {statement} ".replace("\n", " "):
            dbapi = conn.connection.dbapi_connection
            idle = postgres and dbapi.info.transaction_status == TransactionStatus.IDLE
            touched.append((statement.split()[0].upper(), idle))

    engines = {services.engine, services.write_engine or services.engine}  # SQLite's writer
    for engine in engines:
        event.listen(engine, "after_cursor_execute", after)
    try:
        assert run_generation(services, row.id).status == "completed"
    finally:
        for engine in engines:
            event.remove(engine, "after_cursor_execute", after)
    assert touched == [("UPDATE", postgres), ("UPDATE", postgres)]
