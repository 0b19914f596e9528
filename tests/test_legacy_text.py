"""Examples stored renumbered by the release before verbatim training text (issue #13): the
migration fingerprints them, re-importing or re-approving the original restores their text in
place (same id, one audit event, no second example), and `sop-bot examples renumbered`
names the ones nobody has re-imported yet."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session, select

from sop_pipeline import audit, db
from sop_pipeline.examples import (
    ApprovalStatus,
    approve_sop,
    content_hash,
    default_prompt,
    get_example,
    prepare_sop,
)
from sop_pipeline.library import search
from sop_pipeline.models import TrainingExample, UTCDateTime, eval_point
from sop_pipeline.services import Services, build_services
from sop_pipeline.sop_format import load_template, training_text
from sop_pipeline.sop_format.wording import wording_fingerprint
from sop_pipeline.tokens import count_tokens
from tests.conftest import DATA_DIR, make_settings
from tests.fakes.slack_fake import BotFactory, user_reacts

SOURCE = DATA_DIR / "quirks" / "wrapped_50_columns_grouped_steps.txt"
# What the release before issue #13 stored for SOURCE (its own canonicalize, kept as a fixture).
OLD_TEXT = (DATA_DIR / "legacy_renumbered" / f"quirks__{SOURCE.stem}.txt").read_text()
OLD_TITLE = "Standard Cleaning Procedure for the Rapid"  # its wrapped title lost a line
TITLE = "Standard Cleaning Procedure for the Rapid Mixer Granulator"
NEW_TEXT = training_text(SOURCE.read_text(), load_template(None))
APPROVED_AT = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
BEFORE = "0002_retrieval"  # the schema that release ran on

# training_example as it was at 0002_retrieval: what the old release wrote.
_OLD_TABLE = sa.table(
    "training_example",
    *(sa.column(name) for name in (
        "prompt", "sop_text", "title", "content_hash", "source", "source_path", "slack_channel",
        "slack_ts", "approver", "status", "token_count")),
    sa.column("approved_at", UTCDateTime()),
    sa.column("created_at", UTCDateTime()),
)


def old_row(text: str = OLD_TEXT, title: str = OLD_TITLE, **values: object) -> dict:
    """A row exactly as the old approval path wrote it."""
    row = {
        "prompt": default_prompt(title), "sop_text": text, "title": title,
        "content_hash": content_hash(text), "source": "import",
        "source_path": "/qms/SOP-002 rmg.txt", "slack_channel": None, "slack_ts": None,
        "approver": "qa.lead.2025", "status": "approved", "token_count": count_tokens(text),
        "approved_at": APPROVED_AT, "created_at": APPROVED_AT,
    }
    row.update(values)
    return row


def old_database(url: str, *rows: dict) -> None:
    """A database the old release left: schema at 0002_retrieval, these rows in it."""
    engine = db.make_engine(url)
    db.upgrade(engine, BEFORE)
    with engine.begin() as conn:
        conn.execute(sa.insert(_OLD_TABLE), list(rows))
    engine.dispose()


def only_example(services: Services) -> TrainingExample:
    with services.session() as session:
        [example] = session.exec(select(TrainingExample)).all()
        return example


def assert_restored(services: Services, example_id: int, *, approver: str = "qa.lead.2025",
                    reapproved: bool = False) -> None:
    """Same id, approver and dates; the verbatim text, its hash and size, the full title."""
    example = only_example(services)
    assert example.id == example_id
    assert example.sop_text == NEW_TEXT
    assert example.content_hash == content_hash(NEW_TEXT)
    assert example.eval_point == eval_point(example.content_hash)  # the new text's point
    assert example.token_count == count_tokens(NEW_TEXT)
    assert example.wording_hash == wording_fingerprint(OLD_TEXT)
    assert example.title == TITLE and example.prompt == default_prompt(TITLE)
    assert example.approver == approver and example.created_at == APPROVED_AT
    assert (example.approved_at > APPROVED_AT) if reapproved else (
        example.approved_at == APPROVED_AT)
    assert example.status == "approved" and example.legacy_text is False
    with services.session() as session:
        [event] = audit.events(session, action="restore_text")
    assert (event.subject, event.old_value, event.new_value) == (
        f"example:{example_id}", content_hash(OLD_TEXT), content_hash(NEW_TEXT))
    assert event.reason is not None and "author's numbering" in event.reason


def assert_searchable_once(services: Services, example_id: int) -> None:
    """The search index triggers followed the new text: one index row, found by its words."""
    search.forget_statistics()
    with services.session() as session:
        assert [hit.id for hit in search.full_text(session, "granulator cable", 10)] == [
            example_id]
        if session.get_bind().dialect.name == "postgresql":
            count = session.execute(sa.text(
                "SELECT count(*) FROM example_search WHERE example_id = :i"),
                {"i": example_id}).scalar_one()
            assert count == 1
        else:  # FTS5 compares its index with the rows it was built from, and fails if stale
            session.execute(sa.text(
                "INSERT INTO example_search(example_search) VALUES ('integrity-check')"))


@pytest.fixture
def sop_bot(sop_bot_cli):  # noqa: ANN001, ANN201
    return sop_bot_cli(200)


@pytest.fixture
def legacy_services(database_url: str, tmp_path: Path) -> Iterator[Services]:
    """Services on a database where the old release stored SOURCE renumbered (#1)."""
    old_database(database_url, old_row())
    services = build_services(make_settings(database_url, tmp_path / "data"))
    yield services
    services.engine.dispose()


# --- sop-bot import --------------------------------------------------------------------------


def test_reimporting_the_original_restores_the_renumbered_example(
    database_url: str, tmp_path: Path, sop_bot  # noqa: ANN001
) -> None:
    old_database(database_url, old_row())
    source = tmp_path / "SOP-002 rmg.txt"
    shutil.copy(SOURCE, source)

    preview = sop_bot("import", "--dry-run", source)
    assert preview.exit_code == 0, preview.output
    assert f"{source}: already present (#1): importing would restore your numbering in its " \
        "training text" in preview.stdout

    result = sop_bot("import", source)
    assert result.exit_code == 0, result.output
    assert f"{source}: already present (#1): its training text now keeps your numbering\n" \
        in result.stdout
    assert "1 file(s): 0 imported, 1 already present, 0 not compliant" in result.stdout

    services = build_services(make_settings(database_url, tmp_path / "data"))
    try:
        assert_restored(services, 1)
        assert_searchable_once(services, 1)
        again = sop_bot("import", source)  # now it is simply there
        assert f"{source}: already present\n" in again.stdout
        with services.session() as session:
            assert len(audit.events(session, action="restore_text")) == 1
            assert audit.events(session, action="approve") == []  # nothing approved anew
        assert only_example(services).id == 1
    finally:
        services.engine.dispose()


# --- approval ----------------------------------------------------------------------------------


def test_approving_the_original_again_restores_the_example(legacy_services: Services) -> None:
    services = legacy_services
    with db.session_scope(services.engine) as session:
        result = approve_sop(session, services.template, services.settings,
                             text=SOURCE.read_text(), approver="U_OTHER")
    assert result.status == ApprovalStatus.DUPLICATE and result.text_restored
    assert result.stored and result.example.id == 1
    assert result.message == ("This SOP is already training example #1; nothing was added. "
                              "Its training text now keeps your numbering.")
    assert_restored(services, 1)  # the first approver stays the approver
    assert_searchable_once(services, 1)


def test_a_retracted_renumbered_example_is_approved_again_with_its_text_restored(
    database_url: str, tmp_path: Path
) -> None:
    old_database(database_url, old_row(status="retracted"))
    services = build_services(make_settings(database_url, tmp_path / "data"))
    try:
        with services.session() as session:
            assert search.full_text(session, "granulator cable", 10) == []
        with db.session_scope(services.engine) as session:
            result = approve_sop(session, services.template, services.settings,
                                 text=SOURCE.read_text(), approver="U_OTHER")
        assert result.status == ApprovalStatus.REAPPROVED and result.text_restored
        assert_restored(services, 1, approver="U_OTHER", reapproved=True)  # as any re-approval
        with services.session() as session:
            actions = [(e.action, e.new_value) for e in audit.events(session)]
        assert actions == [("restore_text", content_hash(NEW_TEXT)), ("approve", "approved")]
        assert_searchable_once(services, 1)
    finally:
        services.engine.dispose()


CHANNEL, APPROVER, AUTHOR = "CSOP00001", "UAPPROVE1", "UAUTHOR01"


def test_the_check_mark_on_the_original_message_restores_the_example(
    database_url: str, tmp_path: Path, fake_openai, fake_slack, notifier  # noqa: ANN001
) -> None:
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, SOURCE.read_text())
    # the old release stored this message's SOP renumbered when it was approved
    old_database(database_url, old_row(source="slack", source_path=None, slack_channel=CHANNEL,
                                       slack_ts=ts, approver=APPROVER))
    factory = BotFactory(database_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    try:
        bot = factory.start(sop_approvers=[APPROVER, "UAPPROVE2"],
                            sop_watched_channels=[CHANNEL])
        user_reacts(fake_slack, CHANNEL, ts, "UAPPROVE2")
        assert bot.slack.reaction("reaction_added", user="UAPPROVE2", channel=CHANNEL,
                                  ts=ts).status == 200
        bot.wait()
        # the existing duplicate outcome: a note only the approver sees
        [note] = fake_slack.ephemerals_for("UAPPROVE2")
        assert note["text"] == "This SOP is already training example #1; nothing was added."
        assert_restored(bot.ctx.services, 1, approver=APPROVER)
        assert_searchable_once(bot.ctx.services, 1)
    finally:
        factory.close()


def test_an_example_stored_verbatim_is_never_rewritten(services: Services) -> None:
    """Two files of one SOP, numbered differently, both approved since verbatim text: two
    examples, as approved (only rows from before verbatim text are restored)."""
    with db.session_scope(services.engine) as session:
        first = approve_sop(session, services.template, services.settings,
                            text=SOURCE.read_text(), approver="U1")
    renumbered = prepare_sop(OLD_TEXT, services.template, services.settings)
    assert renumbered.compliant and renumbered.wording == first.example.wording_hash
    with db.session_scope(services.engine) as session:
        second = approve_sop(session, services.template, services.settings, text=OLD_TEXT,
                             approver="U2")
    assert second.status == ApprovalStatus.APPROVED and not second.text_restored
    assert second.example.id != first.example.id
    with services.session() as session:
        assert get_example(session, first.example.id).sop_text == NEW_TEXT
        assert audit.events(session, action="restore_text") == []


def test_the_same_words_under_another_title_are_another_sop(legacy_services: Services) -> None:
    """Two machines, one procedure text: the renumbered example of the first keeps its text."""
    services = legacy_services
    other = SOURCE.read_text().replace(
        "Title: Standard Cleaning Procedure for the Rapid\nMixer Granulator",
        "Title: Standard Cleaning Procedure for the Coating Pan")
    with db.session_scope(services.engine) as session:
        result = approve_sop(session, services.template, services.settings, text=other,
                             approver="U1")
    assert result.status == ApprovalStatus.APPROVED and result.example.id == 2
    with services.session() as session:
        assert get_example(session, 1).sop_text == OLD_TEXT
        assert audit.events(session, action="restore_text") == []


# --- the migration -----------------------------------------------------------------------------


def _generated(i: int) -> str:
    return (f"Title: Line clearance {i}\n\n5.0 Procedure:\n5.1 Check room {i} for "
            f"materials of the previous batch.\n5.{i % 7 + 2} Record line {i} in the log.\n")


def _triggers(conn: sa.Connection) -> set[str]:
    if conn.dialect.name == "postgresql":
        query = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'training_example'::regclass " \
                "AND NOT tgisinternal"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    return set(conn.execute(sa.text(query)).scalars())


def test_migration_backfills_every_row_keeps_the_search_triggers_and_downgrades(
    database_url: str,
) -> None:
    retracted = (DATA_DIR / "sops" / "09_autoclave_operation.txt").read_text()
    # more rows than one backfill batch (500)
    rows = [old_row(), old_row(retracted, "Operation of the Autoclave", status="retracted")]
    rows += [old_row(_generated(i), f"Line clearance {i}") for i in range(520)]
    old_database(database_url, *rows)
    engine = db.make_engine(database_url)
    with engine.connect() as conn:
        triggers = _triggers(conn)
    assert triggers, "0002_retrieval installs the search triggers"

    db.upgrade(engine)
    with engine.connect() as conn:
        stored = conn.execute(sa.text(
            "SELECT id, sop_text, wording_hash, legacy_text FROM training_example ORDER BY id"
        )).all()
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("training_example")}
        assert _triggers(conn) == triggers
    assert len(stored) == 522
    assert all(digest == wording_fingerprint(text) for _i, text, digest, _l in stored)
    assert all(legacy for *_rest, legacy in stored)
    assert stored[0][2] == wording_fingerprint(NEW_TEXT)  # the renumbered row, found again
    assert "ix_training_example_wording_hash" in indexes
    with engine.connect() as conn:  # 0004: every row's hold-out point, for counts in SQL
        points = conn.execute(sa.text(
            "SELECT content_hash, eval_point FROM training_example")).all()
    assert all(point == eval_point(digest) for digest, point in points)
    assert "ix_training_example_status_point" in indexes
    search.forget_statistics()
    with Session(engine) as session:  # the triggers still keep search in step
        session.execute(sa.update(TrainingExample).where(TrainingExample.id == 3)
                        .values(sop_text="Title: x\n\n5.0 Procedure:\n5.1 Polish ovens.\n"))
        session.commit()
        assert [hit.id for hit in search.full_text(session, "polish ovens", 5)] == [3]
        assert search.full_text(session, "autoclave", 5) == []  # retracted: not indexed

    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, BEFORE)
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("training_example")}
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("training_example")}
        assert _triggers(conn) == triggers
        assert conn.execute(sa.text("SELECT count(*) FROM training_example")).scalar_one() == 522
    assert "wording_hash" not in columns and "legacy_text" not in columns
    assert "eval_point" not in columns
    assert "ix_training_example_wording_hash" not in indexes
    assert "ix_training_example_status_hash" in indexes  # 0002_retrieval's, back again
    with engine.begin() as conn:  # the old release carries on writing, and search follows
        conn.execute(sa.insert(_OLD_TABLE), [old_row(
            "Title: y\n\n5.0 Procedure:\n5.1 Descale kettles.\n", "Kettles")])
    search.forget_statistics()
    with Session(engine) as session:
        [hit] = search.full_text(session, "descale kettles", 5)
        assert session.execute(sa.text("SELECT title FROM training_example WHERE id = :i"),
                               {"i": hit.id}).scalar_one() == "Kettles"
    db.upgrade(engine)  # and up again
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM training_example WHERE wording_hash IS NULL")).scalar_one() == 0
    engine.dispose()


# --- sop-bot examples renumbered --------------------------------------------------------------


def test_examples_renumbered_names_what_only_the_original_can_restore(
    database_url: str, tmp_path: Path, sop_bot  # noqa: ANN001
) -> None:
    fine = (DATA_DIR / "legacy_renumbered" / "sops__01_tablet_compression_cleaning.txt")
    old_database(database_url, old_row(), old_row(fine.read_text(), "Tablet compression"))

    result = sop_bot("examples", "renumbered")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"#1 {OLD_TITLE}: 11 numbered lines continue the line before, e.g. \"5.2 cleaning "
        "operation and disconnect the supply\"",
        "1 of 2 approved examples stored before verbatim training text look renumbered "
        "(wrapped lines stored as new steps). Their text cannot be restored without the "
        "original: re-import the original file with `sop-bot import <file>` or approve the "
        "original Slack message again; each keeps its id and gets your numbering.",
    ]

    source = tmp_path / "SOP-002 rmg.txt"
    shutil.copy(SOURCE, source)
    assert sop_bot("import", source).exit_code == 0
    after = sop_bot("examples", "renumbered")
    assert after.exit_code == 0, after.output
    assert after.stdout == ("None of the 1 approved examples stored before verbatim training "
                            "text looks renumbered; nothing to do.\n")


def test_an_sop_stored_twice_before_this_fix_is_named_with_its_twin(
    database_url: str, sop_bot  # noqa: ANN001
) -> None:
    """Re-imported after verbatim text but before this fix: the renumbered #1 and the
    verbatim #2 hold the same SOP; only a person can retract one."""
    old_database(database_url, old_row(),
                 old_row(NEW_TEXT, TITLE, source_path="/qms/again/SOP-002 rmg.txt"))
    result = sop_bot("examples", "renumbered")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].endswith(
        "; #2 has the same words, so the SOP is stored twice: retract #1 once you have "
        "checked it")
