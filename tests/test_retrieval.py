"""Retrieval of similar approved SOPs, ranked by the database: the index follows approvals,
retractions, imports and migrations; a draft reads only its few rows; SQLite and PostgreSQL
agree on the top 3."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, text, update
from sqlmodel import Session

from sop_pipeline import db
from sop_pipeline.examples import approve_sop, retract_example
from sop_pipeline.generation.retrieval import Document, ids, retrieve, terms
from sop_pipeline.importer import import_paths
from sop_pipeline.library import search
from sop_pipeline.models import TrainingExample
from sop_pipeline.services import Services, build_services
from tests.conftest import DATA_DIR, make_settings

SOPS = DATA_DIR / "sops"
LIBRARY = [
    ("Cleaning of Tablet Compression Machine", "Write an SOP for cleaning of the tablet press",
     "Dismantle the punches and dies. Clean with purified water."),
    ("Operation of Autoclave", "Write an SOP for autoclave operation",
     "Load the chamber. Start the sterilization cycle at 121 °C."),
    ("Calibration of Analytical Balance", "Write an SOP for balance calibration",
     "Check the balance with standard weights every day."),
    ("Pest Control", "Write an SOP for pest control in the warehouse",
     "Inspect the rodent bait stations weekly; clean the warehouse floor."),
]
# Requests a plant would type, over the fixture library's topics.
AGREEMENT_QUERIES = [
    "Write an SOP for cleaning of the tablet compression machine",
    "calibration of the pH meter",
    "steam sterilizer autoclave operation",
    "line clearance before packaging",
    "receipt and sampling of raw materials in the warehouse",
    "cleaning of the fluid bed dryer",
    "hand washing in the food plant",
    "pest control",
    "calibrate the analytical balance",
    "metal detector checks",
    "torque wrench",
    "dispensing",
]


def by_words(doc: Document) -> int:
    return len(doc.text.split())


def add_rows(services: Services, rows=LIBRARY, statuses=None) -> list[int]:  # noqa: ANN001
    statuses = statuses or ["approved"] * len(rows)
    added = []
    with services.session() as session:
        for (title, prompt, body), status in zip(rows, statuses, strict=True):
            row = TrainingExample(title=title, prompt=prompt, sop_text=body, status=status,
                                  content_hash=hashlib.sha256(body.encode()).hexdigest())
            session.add(row)
            session.flush()
            added.append(row.id)
        session.commit()
    return added


def found(services: Services, request: str, limit: int = 10) -> list[int]:
    with services.session() as session:
        return [hit.id for hit in search.full_text(session, request, limit)]


def import_fixtures(services: Services) -> None:
    with services.session() as session:
        report = import_paths(session, services.template, services.settings, [SOPS],
                              actor="qa.lead")
    assert all(o.status == "approved" for o in report.outcomes)


def top(session: Session, request: str, k: int = 3) -> list[int]:
    return [hit.id for hit in search.full_text(session, request, k)]


# --- ranking ---------------------------------------------------------------------------------


def test_query_words_drop_the_words_every_request_has():
    assert search.query_words("Write an SOP for cleaning the tablet press") == [
        "cleaning", "tablet", "press"]
    assert search.query_words("'; DROP TABLE x; --") == ["drop", "table", "x"]
    assert terms("Cleaning the machines") == terms("cleaned machine")  # offline ranker


def test_the_most_similar_sop_ranks_first_and_inflections_match(services):
    press, autoclave, balance, pest = add_rows(services)
    assert found(services, "Write an SOP for cleaning of the tablet compression machine")[0] \
        == press
    assert found(services, "How to calibrate the balance")[0] == balance
    assert found(services, "sterilization in the autoclave")[0] == autoclave
    # title words weigh more than body words: "clean" is in the pest control body only
    assert found(services, "cleaning")[0] == press
    assert found(services, "xylophone") == []


def test_k_budget_and_fill_ins(services):
    press, autoclave, balance, pest = add_rows(services)
    with services.session() as session:
        chosen = retrieve(session, "cleaning tablet press", k=2, token_budget=1000,
                          count_tokens=by_words)
        assert ids(chosen) == [press, pest]

        def press_is_huge(doc: Document) -> int:
            return 500 if doc.id == press else 40

        tight = retrieve(session, "cleaning tablet press", k=2, token_budget=100,
                         count_tokens=press_is_huge)
        assert ids(tight)[0] == pest and press not in ids(tight)  # skipped, the next one fits
        assert sum(c.tokens for c in tight) <= 100
        # nothing matches: the newest examples still show the format
        assert ids(retrieve(session, "xylophone", k=2, token_budget=1000,
                            count_tokens=by_words)) == [pest, balance]
        assert ids(retrieve(session, "cleaning", k=3, token_budget=1000,
                            count_tokens=by_words, exclude={press}))[0] == pest
        assert retrieve(session, "cleaning", k=0, token_budget=100, count_tokens=by_words) == []
        assert retrieve(session, "cleaning", k=3, token_budget=0, count_tokens=by_words) == []


def test_an_approval_committed_during_a_search_never_breaks_its_ranking(services):
    """The library's size and a word's document frequency are two statements; on PostgreSQL
    (read committed) an approval committed between them makes the frequency exceed the size
    read just before (the load benchmark found drafts failing with "math domain error")."""
    late = [(f"Autoclave sterilization {n}", "Write an SOP for autoclave sterilization",
             f"Title: Autoclave sterilization {n}\n\n5.0 Procedure: Load autoclave {n}.")
            for n in (1, 2)]
    added: list[int] = []

    def approve_meanwhile(conn, cursor, statement, *_) -> None:  # noqa: ANN001
        if "count(*)" in statement and not added:  # the library was empty when counted
            added.extend(add_rows(services, late))

    event.listen(services.engine, "after_cursor_execute", approve_meanwhile)
    try:
        with services.read_session() as session:
            hits = [hit.id for hit in search.full_text(session, "autoclave sterilization", 5)]
    finally:
        event.remove(services.engine, "after_cursor_execute", approve_meanwhile)
    assert added
    assert set(hits) <= set(added)  # whatever this statement's snapshot saw, no error


def test_an_empty_library_gives_no_examples(services):
    with services.session() as session:
        assert retrieve(session, "cleaning", k=3, token_budget=100, count_tokens=by_words) == []


def test_a_draft_reads_only_its_top_rows(services):
    add_rows(services, [(f"Cleaning of machine {n}", f"Write an SOP for machine {n}",
                         f"Clean machine {n} with water. " * (n + 1)) for n in range(40)])
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        statements.append(statement)

    event.listen(services.engine, "before_cursor_execute", record)
    try:
        with services.read_session() as session:  # as a draft reads (draft_session)
            chosen = retrieve(session, "cleaning machine 7", k=3, token_budget=10_000,
                              count_tokens=by_words)
    finally:
        event.remove(services.engine, "before_cursor_execute", record)
    assert len(chosen) == 3
    reading_text = [s for s in statements if "sop_text" in s]
    assert reading_text and all("IN (" in s and "ORDER" not in s for s in reading_text), \
        reading_text  # texts only by id, for the chosen rows
    assert not any("training_example.sop_text" in s for s in statements)  # no ORM full load


# --- the index follows every write path ------------------------------------------------------


def test_only_approved_examples_are_searchable(services):
    press, autoclave, balance, pest = add_rows(
        services, statuses=["approved", "retracted", "approved", "approved"])
    assert autoclave not in found(services, "autoclave operation")
    with services.session() as session:
        assert autoclave not in ids(retrieve(session, "autoclave operation", k=3,
                                             token_budget=1000, count_tokens=by_words))


def test_approve_retract_reapprove_and_edit_keep_the_index_in_step(services):
    sop_text = (SOPS / "09_autoclave_operation.txt").read_text()
    with services.session() as session:
        result = approve_sop(session, services.template, services.settings, text=sop_text,
                             approver="U1", slack_channel="C1", slack_ts="1.1")
        session.commit()
    example_id = result.example.id
    assert found(services, "autoclave") == [example_id]

    with services.session() as session:
        retract_example(session, actor="U1", example_id=example_id)
        # gone from search at once, inside the retracting transaction already
        assert top(session, "autoclave") == []
        session.commit()
    assert found(services, "autoclave") == []

    with services.session() as session:
        again = approve_sop(session, services.template, services.settings, text=sop_text,
                            approver="U2", slack_channel="C1", slack_ts="1.1")
        session.commit()
    assert again.status == "reapproved" and found(services, "autoclave") == [example_id]

    with services.session() as session:  # any write path, even a hand-run UPDATE
        session.execute(update(TrainingExample).where(TrainingExample.id == example_id)
                        .values(title="Torque wrench check", prompt="torque wrench"))
        session.commit()
    assert found(services, "torque") == [example_id]
    with services.session() as session:
        session.execute(text("DELETE FROM audit_event"))
        session.execute(text("DELETE FROM training_example"))
        session.commit()
    assert found(services, "torque") == []


def test_imported_files_are_searchable(services):
    import_fixtures(services)
    with services.session() as session:
        [first] = top(session, "torque wrench calibration", 1)
        assert "Torque" in session.get(TrainingExample, first).title


def test_migration_downgrade_and_upgrade_rebuild_the_index(services):
    import_fixtures(services)
    ids_before = found(services, "cleaning calibration")
    with services.session() as session:
        retract_example(session, actor="U1", example_id=ids_before[0])
        session.commit()
    cfg = db.alembic_config(services.engine)
    from alembic import command

    with services.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with services.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert not any(search.is_index_table(t) for t in tables)
    # writes while the index is gone are picked up when it is built again (in SQL: the
    # model's later columns are not there at 0001)
    with services.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO training_example (title, prompt, sop_text, content_hash, source, "
            "approved_at, status, token_count, created_at) VALUES ('Operation of Fluid Bed "
            "Dryer', 'fluid bed dryer', 'Load the bowl and start drying.', :hash, 'slack', "
            "CURRENT_TIMESTAMP, 'approved', 0, CURRENT_TIMESTAMP)"), {"hash": "f" * 64})
    db.upgrade(services.engine)
    after = found(services, "cleaning calibration")
    assert ids_before[0] not in after
    assert set(after) == set(ids_before) - {ids_before[0]}
    assert len(found(services, "fluid bed dryer")) >= 1


# --- SQLite and PostgreSQL agree -------------------------------------------------------------


def _fixture_ranking(database_url: str, data_dir: Path) -> list[list[int]]:
    services = build_services(make_settings(database_url, data_dir))
    try:
        import_fixtures(services)
        with services.session() as session:
            titles = dict(session.execute(text("SELECT id, title FROM training_example")).all())
            return [[titles[i] for i in top(session, q)] for q in AGREEMENT_QUERIES]
    finally:
        services.engine.dispose()


def test_sqlite_and_postgresql_rank_the_fixture_library_alike(tmp_path, pg_url):
    on_sqlite = _fixture_ranking(f"sqlite:///{tmp_path / 'agree.db'}", tmp_path / "a")
    on_postgres = _fixture_ranking(pg_url, tmp_path / "b")
    for query, lite, pg in zip(AGREEMENT_QUERIES, on_sqlite, on_postgres, strict=True):
        assert lite == pg, f"{query!r}: SQLite {lite} vs PostgreSQL {pg}"
    assert all(on_sqlite)


@pytest.mark.parametrize("request_text", ["", "the a of", "!!!"])
def test_requests_without_words_fall_back_to_the_newest(services, request_text):
    press, autoclave, balance, pest = add_rows(services)
    with services.session() as session:
        assert ids(retrieve(session, request_text, k=2, token_budget=1000,
                            count_tokens=by_words)) == [pest, balance]


def test_a_word_being_counted_is_counted_once_for_drafts_asking_meanwhile():
    import threading

    stats = search._Stats(total=10_000, avg_length=500.0, when=0.0)
    counting, release, asked = threading.Event(), threading.Event(), []

    def first_count(words: list[str]) -> dict[str, int]:
        asked.append(list(words))
        counting.set()
        release.wait(10)
        return {w: 42 for w in words}

    def later_count(words: list[str]) -> dict[str, int]:
        asked.append(list(words))
        return {w: 7 for w in words}

    results: dict[str, dict[str, int]] = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "first", stats.document_frequencies(["tablet"], first_count)))
    first.start()
    assert counting.wait(10)
    later = threading.Thread(target=lambda: results.setdefault(
        "later", stats.document_frequencies(["tablet", "press"], later_count)))
    later.start()
    release.set()
    first.join(10)
    later.join(10)
    assert asked == [["tablet"], ["press"]]  # "tablet" was never counted twice
    assert results == {"first": {"tablet": 42}, "later": {"tablet": 42, "press": 7}}
