"""A pool that cannot starve approvals: sized from the worker count, drafts limited to their
share, a draft with no connection fails with a sentence, an approval still goes through."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from sop_pipeline.examples import approve_sop
from sop_pipeline.generation.generate import generate
from sop_pipeline.services import DatabaseBusy, approval_reserve, build_services
from tests.conftest import DATA_DIR, make_settings


@pytest.fixture
def small_pool(database_url, tmp_path, fake_openai):  # noqa: ANN001, ANN201
    settings = make_settings(database_url, tmp_path / "data", openai_base_url=fake_openai.base_url,
                             bot_worker_threads=4, db_pool_timeout_seconds=0.01)
    services = build_services(settings)
    yield services
    services.engine.dispose()


def test_pool_size_follows_the_worker_count(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path / "d", bot_worker_threads=10,
                             bot_quick_threads=3)
    assert settings.database_pool_size == 17  # a connection per thread of both pools, + 4
    services = build_services(settings)
    try:
        assert services.engine.pool.size() == 17
        assert services.engine.pool._max_overflow == 0  # noqa: SLF001 - no surprise extras
    finally:
        services.engine.dispose()
    assert make_settings(database_url, tmp_path / "d", db_pool_size=7).database_pool_size == 7


def test_drafts_leave_connections_for_approvals(small_pool):
    services = small_pool
    size = services.engine.pool.size()
    share = size - approval_reserve(size)
    text = (DATA_DIR / "sops" / "06_balance_calibration.md").read_text()
    with ExitStack() as drafts:
        for _ in range(share):  # every draft slot busy (e.g. drafts reading the library)
            drafts.enter_context(services.draft_session()).connection()
        with pytest.raises(DatabaseBusy, match="Please ask again"):
            services.draft_session()
        # an approval still gets a connection at once and is stored
        with services.session() as session:
            result = approve_sop(session, services.template, services.settings, text=text,
                                 approver="U1", slack_channel="C1", slack_ts="1.1")
            session.commit()
        assert result.status == "approved"
    with services.draft_session() as session:  # slots come back when drafts close
        assert session.connection() is not None


def test_a_draft_without_a_connection_fails_with_a_sentence(small_pool, fake_openai):
    services = small_pool
    size = services.engine.pool.size()
    with ExitStack() as drafts:
        for _ in range(size - approval_reserve(size)):
            drafts.enter_context(services.draft_session())
        result = generate(services, "Write an SOP for cleaning of the tablet press", "U1")
    assert result.status == "failed"
    assert result.error.startswith("The database is busy with other drafts right now")
    assert fake_openai.requests_to("/chat/completions", "POST") == []
    # the next draft, with connections free again, goes through
    assert generate(services, "Write an SOP for cleaning of the tablet press",
                    "U1").status == "completed"
