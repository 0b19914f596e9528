"""Several instances of SOP Bot on one PostgreSQL: each instance has its own engine (its own
`Services`); approvals, Slack events and scheduler ticks that race each other happen once.

Races are made real with a `threading.Barrier`: every thread starts its call at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline import audit
from sop_pipeline.examples import ApprovalStatus, approve_sop
from sop_pipeline.models import DatasetSnapshot, TrainingExample, TrainingRun
from sop_pipeline.services import Services
from sop_pipeline.training import scheduler
from tests.fakes.slack_fake import BotFactory, user_reacts
from tests.test_training_helpers import Clock, Sleeps, approve, make_services, training_settings

SOPS = Path(__file__).parent / "data" / "sops"
CHANNEL = "CSOP00001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"
TIMEOUT = 60


def race(calls: list[Callable[[], object]]) -> list[object]:
    """Run every call in its own thread, released together by a barrier; their results."""
    barrier = threading.Barrier(len(calls), timeout=TIMEOUT)

    def run(call: Callable[[], object]) -> object:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [f.result(timeout=TIMEOUT) for f in futures]


@pytest.fixture
def instances(pg_url: str, tmp_path: Path, fake_openai) -> Iterator[list[Services]]:  # noqa: ANN001
    """Two instances (two engines, two pools) on one fresh PostgreSQL database."""
    clock = Clock()
    settings = training_settings(pg_url, tmp_path / "data", fake_openai)
    made = [make_services(settings, clock) for _ in range(2)]
    yield made
    for services in made:
        services.engine.dispose()


def _approve(services: Services, text: str, *, ts: str, approver: str) -> str:
    with services.session() as session:
        result = approve_sop(session, services.template, services.settings, text=text,
                             approver=approver, slack_channel=CHANNEL, slack_ts=ts)
        session.commit()
    return result.status


def _examples(services: Services) -> list[TrainingExample]:
    with services.session() as session:
        return list(session.exec(select(TrainingExample)))


def test_concurrent_approvals_of_one_message_store_one_example(instances) -> None:  # noqa: ANN001
    text = (SOPS / "09_autoclave_operation.txt").read_text()
    calls = [lambda s=s, n=n: _approve(s, text, ts="1763000001.000100", approver=f"UAPP{n}")
             for n in range(4) for s in instances]
    statuses = race(calls)

    assert sorted(statuses).count(ApprovalStatus.APPROVED) == 1
    assert set(statuses) == {ApprovalStatus.APPROVED, ApprovalStatus.DUPLICATE}
    [example] = _examples(instances[0])
    with instances[1].session() as session:
        assert [e.action for e in audit.events(session)] == ["approve"]
    assert example.slack_ts == "1763000001.000100"


def test_the_same_sop_posted_twice_and_approved_at_once_is_one_example(instances) -> None:  # noqa: ANN001
    text = (SOPS / "01_tablet_compression_cleaning.txt").read_text()
    statuses = race([lambda: _approve(instances[0], text, ts="1763000001.000100", approver="U1"),
                     lambda: _approve(instances[1], text, ts="1763000002.000200", approver="U2")])
    assert sorted(statuses) == [ApprovalStatus.APPROVED, ApprovalStatus.DUPLICATE]
    assert len(_examples(instances[0])) == 1


# --- two bot instances behind one Slack app -------------------------------------------------------


@pytest.fixture
def two_bots(pg_url: str, tmp_path: Path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    factory = BotFactory(pg_url, tmp_path / "data", fake_openai, fake_slack, notifier)
    yield [factory.start(sop_approvers=[APPROVER, "UAPPROVE2"]) for _ in range(2)]
    factory.close()


def test_one_event_delivered_to_two_instances_at_once_gives_one_example_and_one_reply(
    two_bots, fake_slack  # noqa: ANN001
) -> None:
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    deliveries = [lambda b=b, r=r: b.slack.reaction("reaction_added", user=APPROVER,
                                                    channel=CHANNEL, ts=ts, event_id="Ev0RACE",
                                                    retry_num=r).status
                  for b in two_bots for r in (None, 1)]
    assert race(deliveries) == [200] * 4
    for bot in two_bots:
        bot.wait()

    with two_bots[0].ctx.services.session() as session:
        assert len(list(session.exec(select(TrainingExample)))) == 1
    assert len(fake_slack.replies(CHANNEL, ts)) == 1
    assert len(fake_slack.calls_to("reactions.add")) == 1


def test_two_approvers_reacting_at_once_on_two_instances_give_one_example(
    two_bots, fake_slack  # noqa: ANN001
) -> None:
    ts = fake_slack.user_posts(CHANNEL, AUTHOR, (SOPS / "09_autoclave_operation.txt").read_text())
    for user in (APPROVER, "UAPPROVE2"):
        user_reacts(fake_slack, CHANNEL, ts, user)
    race([lambda: two_bots[0].slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL,
                                             ts=ts),
          lambda: two_bots[1].slack.reaction("reaction_added", user="UAPPROVE2",
                                             channel=CHANNEL, ts=ts)])
    for bot in two_bots:
        bot.wait()
    with two_bots[0].ctx.services.session() as session:
        assert len(list(session.exec(select(TrainingExample)))) == 1
    confirmations = [m for m in fake_slack.replies(CHANNEL, ts)
                     if m["text"].startswith("Added as training example")]
    assert len(confirmations) == 1


# --- schedulers ---------------------------------------------------------------------------------


def test_schedulers_ticking_at_once_start_one_run_and_one_provider_job(
    pg_url: str, tmp_path: Path, fake_openai  # noqa: ANN001
) -> None:
    clock = Clock()
    settings = training_settings(pg_url, tmp_path / "data", fake_openai)
    many = [make_services(settings, clock) for _ in range(4)]
    try:
        approve(many[0], 10)
        results = race([lambda s=s: scheduler.retrain_check(s, sleep=Sleeps()) for s in many])
        assert sum(1 for r in results if r is not None and r.run is not None) == 1

        clock.advance(seconds=settings.scheduler_lease_seconds + 1)  # every lease expired
        again = race([lambda s=s: scheduler.retrain_check(s, sleep=Sleeps()) for s in many])
        assert all(r is None or r.run is None for r in again)

        with many[0].session() as session:
            runs = list(session.exec(select(TrainingRun)))
            snapshots = list(session.exec(select(DatasetSnapshot)))
        assert len(runs) == 1 and len(snapshots) == 1
        assert runs[0].snapshot_id == snapshots[0].id
        assert len(fake_openai.requests_to("/fine_tuning/jobs", "POST")) == 1
        assert len(fake_openai.requests_to("/files", "POST")) <= 2  # train (+ validation)
    finally:
        for services in many:
            services.engine.dispose()
