"""Crash recovery: a real `sop-bot` process is killed with SIGKILL at each stage of a run,
then restarted; the run resumes from its stored state and the provider sees exactly one job.

The kill comes from the test-only fault-injection point `SOP_BOT_CRASH_AT=<point>` (see
`sop_pipeline/training/crashpoints.py`), which fires right after the named transition is
committed, or, for "train_uploaded" and "job_created", right after the provider answered and
before its answer was stored. The fake OpenAI server runs in this test process; the
subprocess reaches it over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from sop_pipeline.models import ModelVersion, RunState, TrainingRun
from tests.test_training_helpers import approve, make_services, training_settings

SOP_BOT = str(Path(sys.executable).with_name("sop-bot"))
pytestmark = pytest.mark.slow  # each case starts three real processes (~5 s each here)


@pytest.fixture
def env(database_url: str, tmp_path: Path, fake_openai) -> dict[str, str]:  # noqa: ANN001
    """The subprocess environment: our database, data dir and the fake; no .env file."""
    values = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "OPENAI_API_KEY": "sk-test-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_TIMEOUT_SECONDS": "10",
        "EVAL_SHARE": "0",
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
        "LOG_LEVEL": "WARNING",
    }
    base = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR", "USER")}
    return {**base, **values}


@pytest.fixture
def approved(database_url: str, tmp_path: Path, fake_openai) -> None:  # noqa: ANN001
    services = make_services(training_settings(database_url, tmp_path / "data", fake_openai))
    try:
        approve(services, 10)
    finally:
        services.engine.dispose()


def sop_bot(env: dict[str, str], cwd: Path, *args: str, crash_at: str | None = None
            ) -> subprocess.CompletedProcess:
    run_env = dict(env)
    if crash_at:
        run_env["SOP_BOT_CRASH_AT"] = crash_at
    return subprocess.run([SOP_BOT, *args], env=run_env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def the_run(env: dict[str, str], tmp_path: Path, fake_openai  # noqa: ANN001
            ) -> tuple[TrainingRun, list[ModelVersion]]:
    """The one run in the database and the model versions."""
    services = make_services(training_settings(env["DATABASE_URL"], tmp_path / "data",
                                               fake_openai))
    try:
        with services.session() as session:
            [run] = session.exec(select(TrainingRun)).all()
            versions = session.exec(select(ModelVersion)).all()
        return run, list(versions)
    finally:
        services.engine.dispose()


def created_jobs(fake) -> list:  # noqa: ANN001
    return [r for r in fake.requests_to("/fine_tuning/jobs", "POST") if r.status == 200]


@pytest.mark.parametrize("crash_at", [
    RunState.PREPARING, RunState.UPLOADING, "train_uploaded", RunState.VALIDATING_FILES,
    "job_created",
])
def test_killed_while_starting_then_restarted_creates_one_job(
    env, approved, tmp_path: Path, fake_openai, crash_at: str  # noqa: ANN001
) -> None:
    killed = sop_bot(env, tmp_path, "retrain", "--force", crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    restarted = sop_bot(env, tmp_path, "runs", "poll")
    assert restarted.returncode == 0, restarted.stderr

    run, _ = the_run(env, tmp_path, fake_openai)
    assert run.provider_job_id, restarted.stdout
    assert len(created_jobs(fake_openai)) == 1 and list(fake_openai.jobs) == [run.provider_job_id]
    assert list(fake_openai.files) == [run.train_file_id]  # one file per snapshot, no orphan
    assert fake_openai.files[run.train_file_id]["filename"].startswith("sop-bot-")

    fake_openai.add_metrics(run.provider_job_id, step=1, train_loss=1.0)
    fake_openai.succeed_job(run.provider_job_id)
    finished = sop_bot(env, tmp_path, "runs", "poll")
    assert finished.returncode == 0, finished.stderr

    run, versions = the_run(env, tmp_path, fake_openai)
    assert run.state == RunState.PROMOTED, finished.stdout
    assert [v.status for v in versions if v.backend != "base"] == ["active"]
    assert len(created_jobs(fake_openai)) == 1
    fake_openai.assert_contract_ok()


@pytest.mark.parametrize("crash_at", [RunState.RUNNING, RunState.SUCCEEDED,
                                      RunState.EVALUATING])
def test_killed_while_finishing_then_restarted_promotes_once(
    env, approved, tmp_path: Path, fake_openai, crash_at: str  # noqa: ANN001
) -> None:
    started = sop_bot(env, tmp_path, "retrain", "--force")
    assert started.returncode == 0, started.stderr
    run, _ = the_run(env, tmp_path, fake_openai)
    fake_openai.add_metrics(run.provider_job_id, step=1, train_loss=1.0)  # now running
    if crash_at != RunState.RUNNING:
        fake_openai.succeed_job(run.provider_job_id)

    killed = sop_bot(env, tmp_path, "runs", "poll", crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if crash_at == RunState.RUNNING:
        fake_openai.succeed_job(run.provider_job_id)
    restarted = sop_bot(env, tmp_path, "runs", "poll")
    assert restarted.returncode == 0, restarted.stderr

    run, versions = the_run(env, tmp_path, fake_openai)
    assert run.state == RunState.PROMOTED
    assert [v.status for v in versions if v.backend != "base"] == ["active"]
    assert len(created_jobs(fake_openai)) == 1
    fake_openai.assert_contract_ok()


# --- the bot itself: killed mid-run by its own scheduler, restarted, resumes in seconds --------


@pytest.mark.parametrize("crash_at", ["train_uploaded", "job_created"])
def test_a_restarted_bot_takes_over_the_dead_ones_lease_and_resumes_in_seconds(
    database_url: str, tmp_path: Path, fake_openai, fake_slack, crash_at: str  # noqa: ANN001
) -> None:
    """The bot's start-up poll advances a run and dies during the upload or the job creation
    (SIGKILL: its lease row stays behind, valid for 10 minutes). The restarted bot sees the
    lease holder's process is gone, takes the lease at once and finishes starting the run:
    one file for the snapshot and one job at the provider."""
    from tests.support.bot_process import BotProcess, bot_env, free_port
    from tests.support.waiting import wait_until

    data_dir = tmp_path / "data"
    services = make_services(training_settings(database_url, data_dir, fake_openai))
    try:
        approve(services, 10)
        from sop_pipeline.training import lifecycle

        started = lifecycle.start_run(services, trigger="cli", force=True)  # not advanced yet
        assert started.run is not None, started.summary
    finally:
        services.engine.dispose()
    env = bot_env(database_url=database_url, data_dir=data_dir, slack_url=fake_slack.base_url,
                  bot_token=fake_slack.bot_token, openai_url=fake_openai.base_url,
                  port=free_port(), scheduler_enabled="true", scheduler_lease_seconds="600",
                  training_poll_seconds="300", eval_share="0", log_level="WARNING")
    workdir = tmp_path / "run"
    workdir.mkdir()

    crashed = subprocess.run([sys.executable, "-m", "bot"], cwd=workdir, capture_output=True,
                             text=True, timeout=120, env={**env, "SOP_BOT_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert len(fake_openai.files) == 1  # it did upload before dying

    bot = BotProcess(env, workdir).start()
    try:
        def job_stored() -> TrainingRun | None:
            run, _ = the_run(env, tmp_path, fake_openai)
            return run if run.provider_job_id else None

        run = wait_until(job_stored, timeout=30, interval=0.2,
                         what="the restarted bot to resume the run (lease: 600 s)")
    finally:
        bot.stop()
    assert list(fake_openai.files) == [run.train_file_id]
    assert len(created_jobs(fake_openai)) == 1 and list(fake_openai.jobs) == [run.provider_job_id]
    fake_openai.assert_contract_ok()
