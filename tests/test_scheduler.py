"""The retrain scheduler: job configuration, the lease between instances, daily warnings.

Jobs are called directly with an injected clock; no real timers fire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline.models import TrainingRun
from sop_pipeline.training import lifecycle, scheduler
from tests.test_training_helpers import Clock, Sleeps, approve, make_services, training_settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_build_scheduler_adds_both_jobs_coalesced_single_instance(
    services, tmp_path: Path  # noqa: ANN001
) -> None:
    sched = scheduler.build_scheduler(services)

    retrain = sched.get_job(scheduler.RETRAIN_JOB_ID)
    poll = sched.get_job(scheduler.POLL_JOB_ID)
    assert retrain.func is scheduler.retrain_check and poll.func is scheduler.poll_active_runs
    assert retrain.trigger.interval.total_seconds() == services.settings.retrain_check_minutes * 60
    assert poll.trigger.interval.total_seconds() == services.settings.training_poll_seconds
    for job in (retrain, poll):
        assert (job.max_instances, job.coalesce, job.args) == (1, True, (services,))

    sched.start(paused=True)  # computes next run times; paused, so nothing fires
    try:
        assert isinstance(scheduler.next_check_time(sched), datetime)
    finally:
        sched.shutdown(wait=False)


def test_no_scheduler_when_disabled_and_no_retrain_job_without_a_backend(
    services, tmp_path: Path  # noqa: ANN001
) -> None:
    from tests.conftest import make_settings

    services.settings = make_settings(services.settings.database_url, tmp_path,
                                      scheduler_enabled=False)
    assert scheduler.build_scheduler(services) is None
    services.settings = make_settings(services.settings.database_url, tmp_path,
                                      training_backend="none")
    sched = scheduler.build_scheduler(services)
    assert sched.get_job(scheduler.RETRAIN_JOB_ID) is None
    assert sched.get_job(scheduler.POLL_JOB_ID) is not None
    assert scheduler.next_check_time(sched) is None


def test_the_lease_is_held_until_it_expires(
    database_url: str, tmp_path: Path, fake_openai, clock: Clock  # noqa: ANN001
) -> None:
    settings = training_settings(database_url, tmp_path / "data", fake_openai,
                                 scheduler_lease_seconds=120)
    a, b = make_services(settings, clock), make_services(settings, clock)
    try:
        assert scheduler.acquire_lease(a)
        assert not scheduler.acquire_lease(b)
        assert scheduler.acquire_lease(a)  # renewal
        clock.advance(seconds=121)
        assert scheduler.acquire_lease(b)  # the holder went quiet: taken over
        assert not scheduler.acquire_lease(a)
        scheduler.release_lease(b)
        assert scheduler.acquire_lease(a)
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_two_instances_on_postgresql_start_exactly_one_run(
    pg_url: str, tmp_path: Path, fake_openai, clock: Clock  # noqa: ANN001
) -> None:
    settings = training_settings(pg_url, tmp_path / "data", fake_openai)
    first, second = make_services(settings, clock), make_services(settings, clock)
    sleeps = Sleeps()
    try:
        approve(first, 10)

        results = [scheduler.retrain_check(first, sleep=sleeps),
                   scheduler.retrain_check(second, sleep=sleeps)]
        clock.advance(seconds=settings.scheduler_lease_seconds + 1)
        results.append(scheduler.retrain_check(second, sleep=sleeps))  # lease moved over
        polled = [scheduler.poll_active_runs(first, sleep=sleeps),
                  scheduler.poll_active_runs(second, sleep=sleeps)]

        with first.session() as session:
            runs = list(session.exec(select(TrainingRun)))
        assert len(runs) == 1
        assert results[0].run is not None and results[1] is None
        assert results[2].run is None and results[2].reason == "active_run"
        assert len(fake_openai.requests_to("/fine_tuning/jobs", "POST")) == 1
        assert polled[0] == [] and len(polled[1]) == 1  # only the lease holder polls
    finally:
        first.engine.dispose()
        second.engine.dispose()


def test_concurrent_start_runs_race_on_the_unique_lock(
    pg_url: str, tmp_path: Path, fake_openai, clock: Clock  # noqa: ANN001
) -> None:
    """Even without the lease (CLI and bot at once), one run wins; the other is told why."""
    from concurrent.futures import ThreadPoolExecutor

    settings = training_settings(pg_url, tmp_path / "data", fake_openai)
    instances = [make_services(settings, clock) for _ in range(4)]
    try:
        approve(instances[0], 10)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(
                lambda s: lifecycle.start_run(s, trigger="cli", force=True), instances))
        assert sum(1 for r in results if r.run is not None) == 1
        assert {r.reason for r in results if r.run is None} == {"active_run"}
    finally:
        for services in instances:
            services.engine.dispose()


def test_deprecation_warning_is_sent_once_a_day(
    database_url: str, tmp_path: Path, fake_openai, clock: Clock  # noqa: ANN001
) -> None:
    settings = training_settings(database_url, tmp_path / "data", fake_openai)
    services = make_services(settings, clock)
    try:
        scheduler.retrain_check(services)
        assert "deprecation_warning" not in services.notifier.kinds()  # 42 days left

        clock.now = datetime(2026, 12, 20, 9, tzinfo=UTC)
        scheduler.retrain_check(services)
        clock.advance(hours=1)
        scheduler.retrain_check(services)
        clock.advance(days=1)
        scheduler.retrain_check(services)

        warnings = [n for n in services.notifier.sent if n.kind == "deprecation_warning"]
        assert len(warnings) == 2
        assert "in 17 day(s)" in warnings[0].text and "in 16 day(s)" in warnings[1].text
    finally:
        services.engine.dispose()


def test_poll_does_nothing_without_an_active_run(services, fake_openai) -> None:  # noqa: ANN001
    assert scheduler.poll_active_runs(services) == []
    assert fake_openai.requests == []


def _put_lease(services, holder: str, clock: Clock, seconds: int = 600) -> None:  # noqa: ANN001
    from datetime import timedelta

    from sop_pipeline.models import SchedulerLease

    with services.session() as session:
        session.add(SchedulerLease(name=scheduler.LEASE_NAME, holder=holder,
                                   expires_at=clock() + timedelta(seconds=seconds)))
        session.commit()


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(
    database_url: str, tmp_path: Path, fake_openai, clock: Clock  # noqa: ANN001
) -> None:
    import socket
    import subprocess
    import sys

    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()  # exited and reaped: its pid is gone
    settings = training_settings(database_url, tmp_path / "data", fake_openai,
                                 scheduler_lease_seconds=600)
    services = make_services(settings, clock)
    try:
        _put_lease(services, f"{socket.gethostname()}:{dead_pid.pid}:dead0001", clock)
        assert scheduler.acquire_lease(services)  # no waiting out the 600 s lease
    finally:
        services.engine.dispose()


@pytest.mark.parametrize("holder", ["other-host:1:abcd1234", "{host}:{parent}:abcd1234"])
def test_a_live_or_remote_holder_keeps_its_lease_until_its_heartbeat_is_stale(
    database_url: str, tmp_path: Path, fake_openai, clock: Clock, holder: str  # noqa: ANN001
) -> None:
    import os
    import socket

    settings = training_settings(database_url, tmp_path / "data", fake_openai,
                                 scheduler_lease_seconds=120, training_poll_seconds=20)
    services = make_services(settings, clock)
    try:
        _put_lease(services, holder.format(host=socket.gethostname(), parent=os.getppid()),
                   clock, seconds=120)
        assert not scheduler.acquire_lease(services)
        clock.advance(seconds=39)
        assert not scheduler.acquire_lease(services)
        clock.advance(seconds=2)  # 41 s without a renewal: two poll intervals missed
        assert scheduler.acquire_lease(services)
    finally:
        services.engine.dispose()
