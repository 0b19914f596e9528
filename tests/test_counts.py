"""Counts by SQL: approval confirmations, status and the retrain check count with one COUNT
query, never by loading example rows, and agree with the per-row rules they replace."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event
from sqlmodel import col, select

from sop_pipeline.examples import (
    _cached_eval_point,
    approve_sop,
    eval_holdout_ids,
    example_counts,
    trained_example_ids,
)
from sop_pipeline.models import (
    STORED_EVAL_SEED,
    DatasetSnapshot,
    RunState,
    TrainingExample,
    TrainingRun,
    eval_point,
)
from sop_pipeline.services import Services
from sop_pipeline.settings import Settings
from sop_pipeline.status import status_report
from tests.conftest import DATA_DIR


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        seen.append(statement)

    engines = {services.engine, services.write_engine or services.engine}  # reads and writes
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def loads_example_rows(seen: list[str]) -> list[str]:
    """SELECTs that read example texts (a full row) other than by one id or one hash."""
    return [s for s in seen if s.lstrip().upper().startswith("SELECT") and "sop_text" in s
            and "training_example.id =" not in s and "content_hash =" not in s]


def add_examples(services: Services, n: int, retracted: int = 0) -> list[int]:
    ids = []
    with services.session() as session:
        for i in range(n):
            body = f"example {i}"
            row = TrainingExample(prompt=f"p{i}", sop_text=body, title=f"t{i}",
                                  status="retracted" if i < retracted else "approved",
                                  content_hash=hashlib.sha256(body.encode()).hexdigest())
            session.add(row)
            session.flush()
            ids.append(row.id)
        session.commit()
    return ids


def trained_on(services: Services, ids: list[int], state: str, tag: str) -> None:
    with services.session() as session:
        snap = DatasetSnapshot(content_hash=tag * 64, example_ids=ids)
        session.add(snap)
        session.flush()
        run = TrainingRun(snapshot_id=snap.id, state=state)
        session.add(run)
        session.flush()
        run.active_lock = None  # a finished run holds no lock
        session.commit()


def reference_counts(services: Services) -> tuple[int, int, int, int]:
    """What the counts were before: by loading every approved row and applying the rules."""
    settings = services.settings
    with services.session() as session:
        approved = list(session.exec(select(TrainingExample).where(
            TrainingExample.status == "approved")))
        retracted = len(list(session.exec(select(TrainingExample).where(
            TrainingExample.status == "retracted"))))
        held = eval_holdout_ids(approved, settings)
        trained = trained_example_ids(session)
    trainable = [ex for ex in approved if ex.id not in held]
    new = [ex for ex in trainable if ex.id not in trained]
    return len(approved), retracted, len(new), len(trainable)


@pytest.mark.parametrize("n, share, min_examples", [(60, 0.2, 10), (8, 0.3, 10), (40, 0.0, 5)])
def test_sql_counts_match_the_per_row_rules(services, n, share, min_examples):
    services.settings.eval_share = share
    services.settings.sop_min_examples = min_examples
    ids = add_examples(services, n, retracted=3)
    trained_on(services, ids[:n // 2], RunState.SUCCEEDED, "a")
    trained_on(services, ids[n // 2:n // 2 + 3], RunState.FAILED, "b")  # failed runs: not trained
    with services.session() as session:
        counts = example_counts(session, services.settings)
    got = (counts.approved, counts.retracted, counts.new_since_last_training,
           counts.total_trainable)
    assert got == reference_counts(services)


def test_status_and_counts_never_load_example_rows(services):
    add_examples(services, 30, retracted=2)
    with statements(services) as seen:
        report = status_report(services)
        with services.session() as session:
            example_counts(session, services.settings)
    assert report.approved == 28 and report.retracted == 2
    assert loads_example_rows(seen) == [], loads_example_rows(seen)


def test_an_approval_confirmation_counts_without_loading_the_library(services):
    add_examples(services, 30)
    text = (DATA_DIR / "sops" / "06_balance_calibration.md").read_text()
    with statements(services) as seen, services.session() as session:
        result = approve_sop(session, services.template, services.settings, text=text,
                             approver="U1", slack_channel="C1", slack_ts="9.9")
        session.commit()
    assert result.counts is not None and result.counts.approved == 31
    assert loads_example_rows(seen) == [], loads_example_rows(seen)
    assert any("count" in s.lower() or "sum(" in s.lower() for s in seen)


def store_points(services: Services, ids: list[int]) -> None:
    """Give these rows their stored hold-out point, as approval and migration 0004 do."""
    with services.session() as session:
        for row in session.exec(select(TrainingExample).where(
                col(TrainingExample.id).in_(ids))):
            row.eval_point = eval_point(row.content_hash)
        session.commit()


@pytest.mark.parametrize("seed", [STORED_EVAL_SEED, 11])
def test_stored_and_computed_hold_out_points_count_alike(services, seed):
    """Rows with a stored point and rows without one (written by hand, or before 0004), under
    the seed the points are stored for and under another: the same counts as the rules."""
    services.settings.eval_share, services.settings.eval_seed = 0.3, seed
    services.settings.sop_min_examples = 5
    ids = add_examples(services, 60, retracted=4)
    store_points(services, ids[::2])
    trained_on(services, ids[:20], RunState.SUCCEEDED, "a")
    with services.session() as session:
        counts = example_counts(session, services.settings)
    got = (counts.approved, counts.retracted, counts.new_since_last_training,
           counts.total_trainable)
    assert got == reference_counts(services)
    assert counts.total_trainable < counts.approved  # some are held out: the test means it


def test_with_every_point_stored_the_count_calls_no_function_per_row(services):
    services.settings.eval_share = 0.3
    store_points(services, add_examples(services, 40))
    _cached_eval_point.cache_clear()
    with services.session() as session:
        example_counts(session, services.settings)
    info = _cached_eval_point.cache_info()
    assert info.hits + info.misses == 0


def test_approval_stores_the_hold_out_point_and_the_default_seed_is_the_stored_one(services):
    text = (DATA_DIR / "sops" / "06_balance_calibration.md").read_text()
    with services.session() as session:
        result = approve_sop(session, services.template, services.settings, text=text,
                             approver="U1")
        session.commit()
    assert result.example is not None
    assert result.example.eval_point == eval_point(result.example.content_hash)
    assert Settings.model_fields["eval_seed"].default == STORED_EVAL_SEED
