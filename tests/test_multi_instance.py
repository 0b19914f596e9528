"""Several instances of SOP Bot on one PostgreSQL: each instance has its own engine (its own
`Services`); approvals, Slack events and scheduler ticks that race each other happen once.

Races are made real with a `threading.Barrier`: every thread starts its call at the same time.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline import audit
from sop_pipeline.examples import ApprovalStatus, approve_sop
from sop_pipeline.models import (
    DatasetSnapshot,
    ModelVersion,
    RunState,
    TrainingExample,
    TrainingRun,
)
from sop_pipeline.services import Services
from sop_pipeline.snapshots import snapshot_bytes
from sop_pipeline.training import scheduler
from tests.fakes.slack_fake import BotFactory, user_reacts
from tests.test_training_helpers import (
    Clock,
    Sleeps,
    approve,
    make_services,
    sop_texts,
    training_settings,
)

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
    assert len(fake_slack.ephemerals_for(APPROVER)) == 1  # approvals answer quietly
    assert fake_slack.replies(CHANNEL, ts) == []
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
    confirmations = [m for m in fake_slack.ephemerals
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


# --- several hosts: nothing shared but the database (issue 18.4) --------------------------------


class Host:
    """One bot instance on its own "host": its own data directory, engine and Slack app."""

    def __init__(self, name: str, pg_url: str, root: Path, fake_openai, fake_slack, notifier,  # noqa: ANN001
                 clock: Clock) -> None:
        self.name, self.data_dir, self.clock = name, root / name, clock
        self.factory = BotFactory(pg_url, self.data_dir, fake_openai, fake_slack, notifier)
        self.bot = self.start()

    def start(self):  # noqa: ANN201
        bot = self.factory.start(
            sop_approvers=[APPROVER], eval_share=0, retrain_min_new_examples=10,
            provider_max_retries=0, fine_tune_epochs="3", fine_tune_batch_size="auto",
            fine_tune_learning_rate_multiplier="0.5", fine_tune_seed=1234)
        bot.ctx.services.clock = self.clock  # the instances' schedulers share one clock
        return bot

    @property
    def services(self) -> Services:
        return self.bot.ctx.services

    def restart_with_an_empty_disk(self) -> None:
        """The platform replaces the container: the process and its data directory are gone."""
        self.factory.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.bot = self.start()

    def snapshot_files(self) -> list[Path]:
        return sorted((self.data_dir / "snapshots").glob("*/*.jsonl"))


@pytest.fixture
def hosts(pg_url: str, tmp_path: Path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    clock = Clock()
    made = [Host(name, pg_url, tmp_path, fake_openai, fake_slack, notifier, clock)
            for name in ("host-a", "host-b")]
    yield made
    for host in made:
        host.factory.close()


def _approve_through_slack_on_both(hosts: list[Host], fake_slack, n: int) -> None:  # noqa: ANN001
    """`n` SOPs posted and approved; Slack delivers each reaction to both instances."""
    for i, text in enumerate(sop_texts(n)):
        ts = fake_slack.user_posts(CHANNEL, AUTHOR, text)
        user_reacts(fake_slack, CHANNEL, ts, APPROVER)
        event_id = f"Ev0HOST{i}"
        race([lambda h=h, ts=ts, event_id=event_id: h.bot.slack.reaction(
            "reaction_added", user=APPROVER, channel=CHANNEL, ts=ts, event_id=event_id).status
              for h in hosts])
        for host in hosts:
            host.bot.wait()
        confirmations = [e for e in fake_slack.ephemerals_for(APPROVER)
                         if e.get("thread_ts") == ts]  # approvals answer quietly, once
        assert len(confirmations) == 1, fake_slack.ephemerals_for(APPROVER)


def _the_run(services: Services) -> TrainingRun:
    with services.session() as session:
        [run] = session.exec(select(TrainingRun)).all()
    return run


def _start_run_whose_upload_fails(host: Host, fake_openai) -> TrainingRun:  # noqa: ANN001
    """The scheduler on `host` snapshots and starts a run; the provider refuses the upload,
    so the run waits in `uploading` with a backoff (what any interruption leaves behind)."""
    outage = fake_openai.inject("POST", "/files", kind="overloaded", times=None)
    result = scheduler.retrain_check(host.services, sleep=Sleeps())
    assert result is not None and result.run is not None
    outage.times = 0  # the provider recovers
    run = _the_run(host.services)
    assert run.state == RunState.UPLOADING and run.train_file_id is None
    assert run.next_attempt_at is not None
    return run


def _finish(host: Host, fake_openai, run: TrainingRun) -> TrainingRun:  # noqa: ANN001
    """Let the backoff and every lease run out, then the scheduler on `host` carries on."""
    host.clock.advance(seconds=host.services.settings.scheduler_lease_seconds + 3600)
    scheduler.poll_active_runs(host.services, sleep=Sleeps())
    run = _the_run(host.services)
    assert run.provider_job_id, (run.state, run.error_code, run.error_message)
    fake_openai.succeed_job(run.provider_job_id)
    host.clock.advance(seconds=60)
    scheduler.poll_active_runs(host.services, sleep=Sleeps())
    return _the_run(host.services)


def _assert_one_job_one_promotion(services: Services, fake_openai, run: TrainingRun) -> None:  # noqa: ANN001
    assert run.state == RunState.PROMOTED, (run.state, run.error_code, run.error_message)
    assert len([r for r in fake_openai.requests_to("/fine_tuning/jobs", "POST")
                if r.status == 200]) == 1
    with services.session() as session:
        versions = list(session.exec(select(ModelVersion)))
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        promotions = [e for e in audit.events(session) if e.action in ("promote", "activate")]
    # one fine-tune, active; the base model's own version row steps back to "previous"
    assert [v.status for v in versions if v.backend != "base"] == ["active"]
    assert len(promotions) == 1
    train, _ = snapshot_bytes(snapshot)
    assert fake_openai.file_content(run.train_file_id) == train  # the exact snapshot bytes


def test_a_run_started_on_one_host_is_advanced_by_another_that_never_saw_its_files(
    hosts: list[Host], fake_slack, fake_openai  # noqa: ANN001
) -> None:
    a, b = hosts
    _approve_through_slack_on_both(hosts, fake_slack, 10)
    with a.services.session() as session:
        assert len(list(session.exec(select(TrainingExample)))) == 10

    run = _start_run_whose_upload_fails(a, fake_openai)
    scheduler.release_lease(a.services)  # host A goes away (clean shutdown)
    assert b.snapshot_files() == []

    run = _finish(b, fake_openai, run)

    assert [p.name for p in b.snapshot_files()] == ["train.jsonl"]  # B wrote its own copy
    _assert_one_job_one_promotion(b.services, fake_openai, run)


def test_a_host_restarted_with_an_empty_disk_between_snapshot_and_upload_completes_the_run(
    hosts: list[Host], fake_slack, fake_openai  # noqa: ANN001
) -> None:
    a, _ = hosts
    _approve_through_slack_on_both(hosts, fake_slack, 10)
    run = _start_run_whose_upload_fails(a, fake_openai)

    a.restart_with_an_empty_disk()
    assert a.snapshot_files() == []

    run = _finish(a, fake_openai, run)
    _assert_one_job_one_promotion(a.services, fake_openai, run)
