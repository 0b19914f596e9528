"""Start-up warm-up (`sop_pipeline.warm_up`): the statements a draft and an approval run are
compiled before the first burst of requests, and nothing the warm-up runs is stored."""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.engine.interfaces import CacheStats
from sqlmodel import select

from sop_pipeline.claims import claim
from sop_pipeline.examples import approve_sop, example_counts, prepare_sop
from sop_pipeline.generation import run_generation, start_generation
from sop_pipeline.models import AuditEvent, Generation, ProcessedEvent, TrainingExample
from sop_pipeline.services import build_services
from sop_pipeline.warm_up import warm_statement_cache
from tests.conftest import make_settings
from tests.fakes.openai_fake import house_sop

REQUEST = "Write an SOP for cleaning of the tablet compression machine"


@pytest.fixture
def services(database_url, tmp_path, fake_openai):  # noqa: ANN001, ANN201
    svc = build_services(make_settings(database_url, tmp_path / "data",
                                       openai_base_url=fake_openai.base_url))
    yield svc
    svc.engine.dispose()


def compiled_statements(engine) -> list[str]:  # noqa: ANN001
    """Statements SQLAlchemy had to compile (a miss in its statement cache) from now on."""
    misses: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if context is not None and context.cache_hit is CacheStats.CACHE_MISS:
            misses.append(" ".join(statement.split())[:120])

    event.listen(engine, "after_cursor_execute", record)
    return misses


def test_warm_up_stores_nothing_and_audits_nothing(services) -> None:  # noqa: ANN001
    warm_statement_cache(services)
    warm_statement_cache(services)  # a restart warms up again: still nothing stored

    with services.session() as session:
        for table in (Generation, TrainingExample, AuditEvent, ProcessedEvent):
            assert session.exec(select(table)).all() == [], table.__name__


def test_after_warm_up_a_draft_and_an_approval_compile_no_statement(services) -> None:  # noqa: ANN001
    warm_statement_cache(services)
    compiled = compiled_statements(services.engine)

    row = start_generation(services, REQUEST, "U1", slack_channel="C1", slack_thread_ts="1.1",
                           slack_ts="1.2", claim=True)
    result = run_generation(services, row.id, claimed=row)
    prepared = prepare_sop(house_sop("cleaning of the tablet compression machine"),
                           services.template, services.settings)
    with services.session() as session:
        assert claim(session, "event:Ev1")
        approved = approve_sop(session, services.template, services.settings, text="",
                               prompt=REQUEST, approver="U2", author="U1", slack_channel="C1",
                               slack_ts="1.2", generation_id=row.id, prepared=prepared,
                               with_counts=False)
        session.commit()
    with services.session() as session:
        example_counts(session, services.settings)

    assert result.status == "completed" and approved.status == "approved"
    assert compiled == [], "\n".join(compiled)


def test_start_up_objects_are_frozen_and_freed_memory_handed_back_where_possible() -> None:
    import gc
    import platform

    from sop_pipeline.warm_up import settle_memory

    try:
        released = settle_memory()
        assert gc.get_freeze_count() > 0  # out of the collector's sight from now on
    finally:
        gc.unfreeze()  # the test process goes on allocating and freeing
    assert released == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
