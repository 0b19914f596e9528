"""Dataset checks (OpenAI cookbook parity), splitting, snapshots and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline import db
from sop_pipeline.dataset import (
    FORMAT_ERROR_KEYS,
    DatasetError,
    check_dataset,
    estimate_epochs,
    split_examples,
)
from sop_pipeline.examples import eval_holdout_ids, retract_example
from sop_pipeline.models import DatasetSnapshot, TrainingExample
from sop_pipeline.services import Services, build_services
from sop_pipeline.snapshots import (
    create_snapshot,
    export_dataset,
    materialise,
    snapshot_bytes,
    snapshot_summary,
)
from sop_pipeline.tokens import count_assistant_tokens, count_chat_tokens, count_tokens
from tests.conftest import DATA_DIR, make_settings
from tests.test_examples import approve_many

JSONL = DATA_DIR / "jsonl"


def trainable(examples: list[TrainingExample], settings) -> list[TrainingExample]:  # noqa: ANN001
    """The examples a snapshot may use: everything but the evaluation hold-out."""
    held = eval_holdout_ids(examples, settings)
    return [e for e in examples if e.id not in held]


@pytest.fixture
def plain_settings(tmp_path: Path):  # noqa: ANN201 - settings for file-only checks
    return make_settings(f"sqlite:///{tmp_path / 'unused.db'}", tmp_path / "data")


# --- tokens --------------------------------------------------------------------------------


def test_token_counts_follow_o200k_and_the_cookbook_formula() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("") == 0
    assert count_tokens("text with <|endoftext|> inside") > 3  # counted as text, no error
    messages = [
        {"role": "system", "content": "hello world"},
        {"role": "user", "content": "hello world", "name": "bob"},
        {"role": "assistant", "content": "hello world"},
    ]
    # 3 per message + role + content (+ name + 1) ... + 3 priming
    expected = 3 * 3 + 3 * (1 + 2) + (1 + 1) + 3
    assert count_chat_tokens(messages) == expected
    assert count_assistant_tokens(messages) == 2


# --- check_dataset -------------------------------------------------------------------------


def test_every_cookbook_error_is_reported_per_key_with_line_numbers(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'x.db'}", tmp_path, sop_max_example_tokens=256,
        sop_min_examples=50,
    )
    report = check_dataset(JSONL / "cookbook_errors.jsonl", settings)

    assert not report.ok
    expected_lines = {
        "data_type": [2],
        "missing_messages_list": [3],
        "message_missing_key": [4],
        "message_unrecognized_key": [5],
        "unrecognized_role": [6],
        "missing_content": [4, 7],
        "example_missing_assistant_message": [8],
        "invalid_json": [9],
        "duplicate_example": [10],
        "over_token_limit": [11],
    }
    for key, lines in expected_lines.items():
        assert report.error_lines[key] == lines, key
        assert report.errors[key] == len(lines), key
    assert set(FORMAT_ERROR_KEYS) <= set(report.errors)
    assert report.errors["too_few_examples"] == 1
    assert (report.n_lines, report.n_examples) == (11, 10)
    assert report.n_over_limit == 1
    sentences = " ".join(report.error_sentences())
    assert "invalid_json: 1 time(s), the line is not valid JSON (line 9)." in sentences
    assert "at least 50 are needed" in sentences
    data = report.to_dict()
    assert data["ok"] is False and data["errors"]["data_type"] == 1
    json.dumps(data)  # plain data for --json


def test_non_json_lines_are_reported_and_checking_goes_on(plain_settings) -> None:  # noqa: ANN001
    report = check_dataset(JSONL / "not_json.jsonl", plain_settings, min_examples=1)
    assert report.error_lines["invalid_json"] == [1]
    assert report.error_lines["missing_messages_list"] == [2]
    assert report.warnings["blank_line"] == 1
    assert report.n_examples == 2  # the line after the blank one was still read


def test_non_utf8_file_is_a_sentence(plain_settings) -> None:  # noqa: ANN001
    with pytest.raises(DatasetError, match="not UTF-8"):
        check_dataset(JSONL / "not_utf8.jsonl", plain_settings)


def _lines(n: int, words: int = 20) -> list[str]:
    return [
        json.dumps({"messages": [
            {"role": "system", "content": "You write SOPs."},
            {"role": "user", "content": f"Write an SOP for task {i}"},
            {"role": "assistant", "content": " ".join(["step"] * words) + f" {i}"},
        ]})
        for i in range(n)
    ]


def test_token_statistics_epochs_and_cost(plain_settings) -> None:  # noqa: ANN001
    report = check_dataset(_lines(10), plain_settings)
    assert report.ok
    per_example = count_chat_tokens(json.loads(_lines(1)[0])["messages"])
    assert report.total_tokens.min == report.total_tokens.max == per_example
    assert report.total_tokens.p90 == per_example
    assert report.assistant_tokens.median > 0
    assert report.epochs == 10  # cookbook: min(25, 100 // 10)
    assert report.billed_tokens == 10 * per_example * 10
    assert report.estimated_cost_usd == pytest.approx(report.billed_tokens / 1e6 * 3.0)
    assert "10 examples" in report.summary()


@pytest.mark.parametrize(("n", "configured", "epochs"), [
    (3, "auto", 25), (10, "auto", 10), (50, "auto", 3), (10_000, "auto", 2), (10, "4", 4),
])
def test_epoch_rule(tmp_path: Path, n: int, configured: str, epochs: int) -> None:
    settings = make_settings("sqlite:///x.db", tmp_path, fine_tune_epochs=configured)
    assert estimate_epochs(n, settings) == epochs


# --- split and snapshots ---------------------------------------------------------------------


def test_split_is_deterministic_and_skips_validation_for_small_sets(services: Services) -> None:
    examples = approve_many(services, 25)
    train, validation = split_examples(examples, services.settings)
    assert len(validation) == 2 and len(train) == 23  # round(25 * 0.1)
    assert split_examples(list(reversed(examples)), services.settings)[1] == list(
        reversed(validation)
    )
    assert split_examples(examples[:19], services.settings) == (examples[:19], [])


def test_snapshot_stores_checked_bytes_and_is_reused_for_same_content(
    services: Services, tmp_path: Path,
) -> None:
    examples = approve_many(services, 12)
    n = len(trainable(examples, services.settings))
    assert n == 11, "one of these twelve is held out for evaluation"
    with db.session_scope(services.engine) as session:
        snapshot = create_snapshot(session, services.settings)
    assert not services.settings.snapshots_dir.exists(), "nothing is written to local disk"
    train, _ = materialise(snapshot, tmp_path / "elsewhere")
    assert train.read_bytes() == snapshot_bytes(snapshot)[0]
    assert train.parent.parent == tmp_path / "elsewhere"
    assert train.parent.name == snapshot.content_hash[:12]
    assert check_dataset(train, services.settings).ok
    first = json.loads(train.read_text().splitlines()[0])["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == services.settings.sop_system_prompt
    assert snapshot.n_train == 11 and snapshot.n_validation == 0
    assert snapshot.validation_jsonl_gz is None and snapshot_bytes(snapshot)[1] is None
    assert snapshot.token_count > 0 and snapshot.estimated_epochs == 9  # 100 // 11
    assert snapshot_summary(snapshot).startswith(
        "11 examples (11 train, no validation set: fewer than 20 examples), "
    )
    assert "about 9 epochs, estimated cost $" in snapshot_summary(snapshot)

    with db.session_scope(services.engine) as session:
        again = create_snapshot(session, services.settings)
        assert again.id == snapshot.id
        assert len(session.exec(select(DatasetSnapshot)).all()) == 1
    assert snapshot_bytes(again) == snapshot_bytes(snapshot)


def test_snapshot_with_validation_and_explicit_ids(services: Services) -> None:
    examples = approve_many(services, 24)
    used = trainable(examples, services.settings)
    assert len(used) == 23
    with db.session_scope(services.engine) as session:
        snapshot = create_snapshot(session, services.settings)
        subset = create_snapshot(
            session, services.settings, example_ids=[e.id for e in examples[:10]]
        )
    assert snapshot.n_validation == 2 and snapshot.n_train == 21
    assert sorted(snapshot.train_example_ids + snapshot.validation_example_ids) == sorted(
        e.id for e in used
    )
    assert snapshot_bytes(snapshot)[1].count(b"\n") == 2
    assert "(21 train, 2 validation)" in snapshot_summary(snapshot)
    assert subset.example_ids == [e.id for e in examples[:10]]
    with db.session_scope(services.engine) as session, pytest.raises(DatasetError, match="#999"):
        create_snapshot(session, services.settings, example_ids=[999])


def test_retracted_examples_leave_the_next_snapshot(services: Services) -> None:
    examples = trainable(approve_many(services, 12), services.settings)
    with db.session_scope(services.engine) as session:
        before = create_snapshot(session, services.settings)
        retract_example(session, actor="qa", reason="superseded", example_id=examples[0].id)
    with db.session_scope(services.engine) as session:
        after = create_snapshot(session, services.settings)
    assert examples[0].id in before.example_ids
    assert examples[0].id not in after.example_ids
    assert after.id != before.id
    assert examples[0].title.encode() not in snapshot_bytes(after)[0]


def test_too_few_examples_is_a_sentence_and_stores_nothing(services: Services) -> None:
    approve_many(services, 4)
    with db.session_scope(services.engine) as session:
        with pytest.raises(DatasetError) as caught:
            create_snapshot(session, services.settings)
        assert session.exec(select(DatasetSnapshot)).all() == []
    assert str(caught.value) == (
        "Only 4 approved example(s) can be used for training, and at least 10 are needed; "
        "approve 6 more SOP(s) first."
    )


def test_oversized_example_stops_the_snapshot(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(database_url, tmp_path / "d", sop_max_example_tokens=256,
                             sop_min_examples=1)
    services = build_services(settings)
    try:
        with db.session_scope(services.engine) as session:  # bypass approval's own limit
            session.add(TrainingExample(prompt="p", sop_text="word " * 400, content_hash="h1"))
        with db.session_scope(services.engine) as session, pytest.raises(
            DatasetError, match="over_token_limit"
        ):
            create_snapshot(session, settings)
    finally:
        services.engine.dispose()


def test_export_copies_the_snapshot_files(services: Services, tmp_path: Path) -> None:
    approve_many(services, 21)
    out, val = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "val.jsonl"
    with db.session_scope(services.engine) as session:
        snapshot = export_dataset(session, services.settings, out, val)
    assert out.read_bytes() == snapshot_bytes(snapshot)[0]
    assert val.read_bytes() == snapshot_bytes(snapshot)[1]
    report = check_dataset(out, services.settings)
    assert report.ok and report.n_examples == snapshot.n_train
