"""Approving, retracting and counting training examples, on a real database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline import audit, db
from sop_pipeline.examples import (
    ApprovalStatus,
    approve_sop,
    content_hash,
    default_prompt,
    eval_holdout_ids,
    example_counts,
    get_example,
    list_examples,
    retract_example,
)
from sop_pipeline.models import RunState, TrainingExample, TrainingRun
from sop_pipeline.services import Services, build_services
from sop_pipeline.snapshots import create_snapshot
from tests.conftest import make_settings

EQUIPMENT = [
    "Tablet Compression Machine", "Fluid Bed Dryer", "Rapid Mixer Granulator",
    "Blister Pack Line", "Capsule Filling Machine", "Coating Pan", "Autoclave",
    "Purified Water System", "Dispensing Booth", "Vial Washing Machine", "Octagonal Blender",
    "Sifter", "Multimill", "Labelling Machine", "Laminar Air Flow Unit", "Dehumidifier",
    "Weighing Balance", "pH Meter", "Dissolution Apparatus", "Tray Dryer", "Stability Chamber",
    "Cold Room", "Cartonator", "Induction Sealer", "Fume Hood",
]


def sop_text(i: int, title: str | None = None) -> str:
    """A compliant house-format SOP, different for every `i`."""
    name = EQUIPMENT[i % len(EQUIPMENT)] + (f" {i // len(EQUIPMENT) + 1}" if i >= 25 else "")
    title = title or f"Cleaning of {name}"
    return f"""Title: {title}

1.0 Objective: To lay down the procedure for cleaning of the {name}.

2.0 Scope: This SOP applies to the {name} in the production area.

3.0 Responsibility:
3.1 Production operator shall clean the {name}.
3.2 Production officer shall verify the cleaning.

4.0 Accountability: Head of Production.

5.0 Procedure:
5.1 Switch off the main power supply of the {name}.
5.2 Remove all detachable parts of the {name}.
5.3 Clean the parts with a lint-free cloth soaked in purified water.
5.4 Dry all parts with filtered compressed air.
5.5 Record the cleaning in the equipment log book.

6.0 Abbreviations:
SOP: Standard Operating Procedure
"""


BROKEN = "Title: Gowning\n\n1.0 Objective: To gown.\n\n5.0 Procedure:\n5.1 Wear a gown.\n"


def approve(services: Services, text: str, **kwargs: object):  # noqa: ANN201
    """Approve in its own transaction, as the Slack layer does."""
    with db.session_scope(services.engine) as session:
        kwargs.setdefault("approver", "U_APPROVER")
        return approve_sop(session, services.template, services.settings, text=text, **kwargs)


def approve_many(services: Services, n: int, start: int = 0) -> list[TrainingExample]:
    return [approve(services, sop_text(i)).example for i in range(start, start + n)]


def test_compliant_sop_becomes_canonical_example_with_audit(services: Services) -> None:
    messy = sop_text(0).replace("1.0 Objective:", "1. OBJECTIVE:").replace("\n", "\r\n")
    result = approve(services, messy, slack_channel="C1", slack_ts="111.1", author="U_AUTHOR")

    assert result.status == ApprovalStatus.APPROVED
    assert result.stored
    example = result.example
    assert example.id is not None
    # The training text keeps the author's numbering and heading as approved (issue #13);
    # only the markup (here: CRLF line ends) is normalised.
    assert "1. OBJECTIVE: To lay down" in example.sop_text and "\r" not in example.sop_text
    assert example.content_hash == content_hash(example.sop_text)
    assert example.prompt == "Write an SOP for Cleaning of Tablet Compression Machine"
    assert example.title == "Cleaning of Tablet Compression Machine"
    assert example.token_count > 50
    assert (example.slack_channel, example.slack_ts) == ("C1", "111.1")
    assert result.counts.new_since_last_training == 1
    assert result.message == (
        f"Added as training example #{example.id} (1 of 10 new examples toward the next retrain)."
    )
    with services.session() as session:
        events = audit.events(session, action="approve")
    assert [(e.actor, e.subject) for e in events] == [("U_APPROVER", f"example:{example.id}")]


def test_explicit_prompt_is_kept(services: Services) -> None:
    result = approve(services, sop_text(1), prompt="  Write an SOP for drying granules  ")
    assert result.example.prompt == "Write an SOP for drying granules"


def test_non_compliant_sop_is_refused_with_findings_and_nothing_stored(
    services: Services,
) -> None:
    result = approve(services, BROKEN, slack_channel="C1", slack_ts="2.2")

    assert result.status == ApprovalStatus.NOT_COMPLIANT
    assert not result.stored and result.example is None
    codes = {f.code for f in result.findings if f.severity == "error"}
    assert codes, "findings explain what is wrong"
    assert "Not added as a training example" in result.message
    with services.session() as session:
        assert list_examples(session) == []
        assert audit.events(session) == []


def test_same_text_or_same_message_twice_is_a_duplicate(services: Services) -> None:
    first = approve(services, sop_text(0), slack_channel="C1", slack_ts="1.0")
    again_text = approve(services, sop_text(0), slack_channel="C2", slack_ts="9.9")
    again_msg = approve(services, sop_text(3), slack_channel="C1", slack_ts="1.0")

    assert again_text.status == again_msg.status == ApprovalStatus.DUPLICATE
    assert again_text.example.id == again_msg.example.id == first.example.id
    assert again_text.stored
    assert "already training example" in again_text.message
    with services.session() as session:
        assert len(list_examples(session)) == 1
        assert len(audit.events(session, action="approve")) == 1


def test_retract_keeps_the_row_audits_and_reapproval_restores_it(services: Services) -> None:
    example = approve(services, sop_text(0), slack_channel="C1", slack_ts="5.5").example
    with db.session_scope(services.engine) as session:
        retracted = retract_example(
            session, actor="U_QA", reason="wrong torque value", slack_channel="C1", slack_ts="5.5"
        )
    assert retracted.status == "retracted" and retracted.retracted_by == "U_QA"
    with db.session_scope(services.engine) as session:  # a second retract changes nothing
        retract_example(session, actor="U_QA", example_id=example.id)
        assert retract_example(session, actor="U_QA", example_id=999) is None

    with services.session() as session:
        assert example_counts(session, services.settings).retracted == 1
        assert list_examples(session, status="approved") == []

    again = approve(services, sop_text(0), approver="U_OTHER")
    assert again.status == ApprovalStatus.REAPPROVED
    assert again.example.id == example.id and again.example.status == "approved"
    assert again.example.approver == "U_OTHER"
    with services.session() as session:
        actions = [(e.action, e.old_value, e.new_value) for e in audit.events(session)]
        assert get_example(session, example.id).retracted_at is None
    assert actions == [
        ("approve", None, "approved"),
        ("retract", "approved", "retracted"),
        ("approve", "retracted", "approved"),
    ]
    retract_events = [e for e in audit.events(services.session(), action="retract")]
    assert retract_events[0].reason == "wrong torque value"


@pytest.mark.parametrize(
    ("title", "prompt"),
    [
        ("Cleaning of Fluid Bed Dryer", "Write an SOP for Cleaning of Fluid Bed Dryer"),
        ("SOP for Line Clearance", "Write an SOP for Line Clearance"),
        ("Standard Operating Procedure for Gowning.", "Write an SOP for Gowning"),
        (
            "Standard Cleaning Procedure for Tablet Compression Machine",
            "Write an SOP for Standard Cleaning Procedure for Tablet Compression Machine",
        ),
        (
            "RECEIPT OF RAW MATERIALS IN THE QC LAB",
            "Write an SOP for Receipt of Raw Materials in the QC Lab",
        ),
        (None, "Write an SOP"),
    ],
)
def test_default_prompt_keeps_the_title_as_written(title: str | None, prompt: str) -> None:
    assert default_prompt(title) == prompt


def test_counts_new_examples_since_the_last_trained_snapshot(services: Services) -> None:
    approve_many(services, 10)
    with db.session_scope(services.engine) as session:
        snapshot = create_snapshot(session, services.settings)
        session.add(TrainingRun(snapshot_id=snapshot.id, state=RunState.RUNNING))
    with services.session() as session:
        counts = example_counts(session, services.settings)
    assert (counts.approved, counts.new_since_last_training, counts.threshold) == (10, 10, 10)
    assert counts.progress == "10 new examples: enough for the next retrain, which needs 10"

    with db.session_scope(services.engine) as session:
        run = session.exec(select(TrainingRun)).one()
        run.state, run.active_lock = RunState.PROMOTED, None
    approve_many(services, 3, start=10)
    with services.session() as session:
        counts = example_counts(session, services.settings)
    assert counts.approved == 13
    assert counts.new_since_last_training == 3
    assert counts.progress == "3 of 10 new examples toward the next retrain"


def test_holdout_is_stable_and_needs_enough_examples(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(database_url, tmp_path / "data", eval_share=0.3, sop_min_examples=5)
    services = build_services(settings)
    try:
        examples = approve_many(services, 30)
        held = eval_holdout_ids(examples, settings)
        assert 0 < len(held) < 30
        more = examples + approve_many(services, 10, start=30)
        assert held <= eval_holdout_ids(more, settings), "old examples never change sides"
        assert eval_holdout_ids(examples[:5], settings) == set(), "too few left to train"

        with db.session_scope(services.engine) as session:
            snapshot = create_snapshot(session, settings)
            counts = example_counts(session, settings)
        all_held = eval_holdout_ids(more, settings)
        assert not set(snapshot.example_ids) & all_held
        assert counts.total_trainable == 40 - len(all_held)
    finally:
        services.engine.dispose()


def _race(engines: list, settings, template, text: str, ts: str = "1700000000.000100") -> list[str]:  # noqa: ANN001, E501
    """Approve the same Slack message from several engines at the same moment."""
    barrier = threading.Barrier(len(engines))
    statuses: list[str] = []
    errors: list[BaseException] = []

    def worker(engine) -> None:  # noqa: ANN001
        try:
            barrier.wait(timeout=10)
            with db.session_scope(engine) as session:
                result = approve_sop(
                    session, template, settings, text=text, approver="U1",
                    slack_channel="C_RACE", slack_ts=ts,
                )
                statuses.append(result.status)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "approval threads hung"
    assert not errors, errors
    return statuses


def test_concurrent_approvals_of_one_message_store_one_example(services: Services) -> None:
    engines = [db.make_engine(services.settings.database_url) for _ in range(4)]
    try:
        statuses = _race(engines, services.settings, services.template, sop_text(7))
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(statuses) == ["approved", "duplicate", "duplicate", "duplicate"]
    with services.session() as session:
        assert len(list_examples(session)) == 1
        assert len(audit.events(session, action="approve")) == 1


def test_two_instances_on_postgresql_store_one_example(pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(pg_url, tmp_path / "data")
    services = build_services(settings)
    engines = [db.make_engine(settings.database_url) for _ in range(2)]
    try:
        for i in range(5):  # several rounds, different messages, to give the race a chance
            statuses = _race(engines, settings, services.template, sop_text(i), ts=f"17.{i}")
            assert sorted(statuses) == ["approved", "duplicate"]
        with services.session() as session:
            assert len(list_examples(session)) == 5
            assert len(audit.events(session, action="approve")) == 5
    finally:
        for engine in engines:
            engine.dispose()
        services.engine.dispose()
