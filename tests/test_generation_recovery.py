"""Drafts left unfinished by a dead worker are failed once, with a sentence, never twice."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from sop_pipeline.generation import start_generation
from sop_pipeline.generation.recovery import (
    ABANDONED_SENTENCE,
    current_worker,
    fail_abandoned_drafts,
    worker_is_gone,
)
from sop_pipeline.models import Generation

REQUEST = "Write an SOP for cleaning of the tablet compression machine"


def _dead_worker() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return current_worker().split(":")[0] + f":{proc.pid}:previous"


def _set(services, generation_id: int, **values) -> None:  # noqa: ANN001
    with services.session() as session:
        row = session.get(Generation, generation_id)
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
        session.commit()


def test_a_draft_of_a_dead_process_is_failed_with_a_sentence(services) -> None:  # noqa: ANN001
    row = start_generation(services, REQUEST, "U1", slack_channel="C1", slack_thread_ts="1.0")
    _set(services, row.id, status="streaming", worker=_dead_worker(), slack_ts="1.1")

    [failed] = fail_abandoned_drafts(services)

    assert (failed.id, failed.slack_ts, failed.error) == (row.id, "1.1", ABANDONED_SENTENCE)
    with services.session() as session:
        assert session.get(Generation, row.id).status == "failed"
    assert fail_abandoned_drafts(services) == []  # once only


def test_a_draft_of_a_live_worker_is_left_alone_until_it_is_too_old(services) -> None:  # noqa: ANN001
    row = start_generation(services, REQUEST, "U1")
    assert row.worker == current_worker() and not worker_is_gone(row.worker)
    _set(services, row.id, worker="other-host:123")
    assert fail_abandoned_drafts(services) == []

    timeout = services.settings.sop_generation_timeout_seconds
    later = services.clock() + timedelta(seconds=2 * timeout + 61)
    services.clock = lambda: later
    assert [g.id for g in fail_abandoned_drafts(services)] == [row.id]
