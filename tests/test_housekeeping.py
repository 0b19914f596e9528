"""Housekeeping: delivery claims and posted approval confirmations are forgotten after a week,
once a day across instances; lasting facts and owed confirmations are kept."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from sop_pipeline.claims import claim
from sop_pipeline.housekeeping import RETENTION, prune_once_a_day
from sop_pipeline.models import ApprovalConfirmation, ProcessedEvent
from sop_pipeline.training import sunset
from tests.conftest import make_settings
from tests.test_training_helpers import Clock, make_services


def _confirmation(key: str, created, posted) -> ApprovalConfirmation:  # noqa: ANN001
    return ApprovalConfirmation(key=key, channel="C1", thread_ts="1.1", reacted_ts="1.1",
                                approver="U1", status="approved", created_at=created,
                                posted_at=posted)


def test_old_delivery_claims_and_posted_confirmations_go_once_a_day(database_url, tmp_path):  # noqa: ANN001
    clock = Clock()
    services = make_services(make_settings(database_url, tmp_path), clock)
    now, old = clock.now, clock.now - RETENTION - timedelta(hours=1)
    with services.session() as session:
        for key in ("event:Ev1", "command:/sop:trig-1", "action:regenerate:7:U1:1.2",
                    "deprecation_warning:2026-11-01", sunset.ORG_BLOCKED_KEY,
                    "azure:deployment_deleted:sop-bot-1"):
            claim(session, key, old)
        claim(session, "event:Ev2", now - timedelta(days=1))  # recent: a redelivery may come
        session.add(_confirmation("event:Ev1", old, old))
        session.add(_confirmation("event:Ev3", old, None))  # still owed: kept however old
        session.add(_confirmation("event:Ev2", now, now))
        session.commit()

    pruned = prune_once_a_day(services)

    assert pruned is not None and (pruned.claims, pruned.confirmations) == (4, 1)
    with services.session() as session:
        keys = set(session.exec(select(ProcessedEvent.key)))
        confirmations = set(session.exec(select(ApprovalConfirmation.key)))
    assert keys == {sunset.ORG_BLOCKED_KEY, "azure:deployment_deleted:sop-bot-1", "event:Ev2",
                    f"housekeeping:{now.date().isoformat()}"}
    assert confirmations == {"event:Ev3", "event:Ev2"}

    assert prune_once_a_day(services) is None  # another instance, same day: nothing to do
    clock.advance(days=8)
    again = prune_once_a_day(services)
    assert again is not None and again.claims == 2  # event:Ev2 and the first day's marker
