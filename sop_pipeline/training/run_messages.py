"""What people read about a training run: its state in words, and the content of its one
admin-channel message, built from the database alone (so any instance, after any restart,
can post or update it). The Slack layer (`bot/notifier.py`) renders it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sop_pipeline.models import TrainingRun


# Every state a run can be in, in words a QA lead understands (no internal names in Slack).
STATE_WORDS: dict[str, str] = {
    "preparing": "preparing the training data",
    "uploading": "sending the training data to the provider",
    "validating_files": "waiting for the provider to check the training data",
    "queued": "waiting in the provider's queue",
    "running": "training",
    "succeeded": "trained; comparing it with the current model next",
    "evaluating": "comparing the new model with the current one",
    "promoted": "finished: the new model is now in use",
    "rejected": "finished: the new model was not better, so the current one stays in use",
    "failed": "stopped: training did not complete",
    "cancelled": "cancelled",
}
FINISHED = ("promoted", "rejected", "failed", "cancelled")


def state_words(state: str | None) -> str:
    """A run state as words; an unknown state is described, never shown raw."""
    return STATE_WORDS.get(str(state or ""), "in an unexpected state; an admin can check "
                                                "`sop-bot runs show`")


@dataclass
class RunMessage:
    """The content of a run's one admin-channel message, built from the database alone (so a
    restarted bot renders the same message). Texts are plain sentences; the Slack layer
    escapes and lays them out."""

    run_id: int
    state: str
    status: str  # state in words
    lines: list[str]  # job, progress
    started_at: str = ""  # "10:04 UTC"
    started_by: str | None = None  # Slack user id of the admin who asked for it, or None
    trigger: str = ""  # how it started when no person asked: "the retraining schedule"
    data: str = ""  # the snapshot in one line, with the estimated cost
    verdict: str | None = None  # the gate's decision, or why the run stopped
    table: str | None = None  # the evaluation comparison table (fixed-width text)
    chart_path: str | None = None
    chart_posted: bool = False
    ts: str | None = None  # the posted message, if any
    shown_state: str | None = None
    stored_ts: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def _when(value: object) -> str:
    return value.strftime("%H:%M UTC") if hasattr(value, "strftime") else "?"


def _table(scores: dict) -> str | None:
    """The comparison table from a run's stored scores (the same function the gate used)."""
    from types import SimpleNamespace

    from sop_pipeline.evaluation import comparison_table

    columns = []
    for role, key in (("Candidate", "candidate"), ("Current", "baseline")):
        data = scores.get(key)
        if not isinstance(data, dict):
            return None
        cases = [SimpleNamespace(error=c.get("error")) for c in data.get("cases") or []]
        mode = " (retrieval)" if data.get("mode") == "retrieval" else ""
        columns.append((f"{role}: {data.get('model')}{mode}", SimpleNamespace(
            n=data.get("n_cases", len(cases)), cases=cases,
            **{name: data.get(name) for name in
               ("compliance", "coverage", "similarity", "length", "aggregate")})))
    # stored scores rebuilt as look-alikes of ModelScores (only the attributes the table reads)
    return comparison_table(columns)  # type: ignore[arg-type]


def _failure(run: TrainingRun) -> str:
    message = str(getattr(run, "error_message", "") or "").strip()
    if run.state == "cancelled":
        return (f"Training was cancelled{': ' + message if message else '.'} "
                "The current model stays in use.")
    detail = f" The provider said: {message}" if message else ""
    return ("Training did not complete, so nothing changed: the current model stays in use."
            f"{detail} Fix what it names, then start a new run with `/sop-retrain`.")


def run_message(services, run_id: int) -> RunMessage | None:  # noqa: ANN001 - Services
    """What admins should see about run `run_id` now (None for an unknown run)."""
    from sop_pipeline.models import DatasetSnapshot, TrainingRun
    from sop_pipeline.snapshots import snapshot_summary
    from sop_pipeline.training.runs import latest_metrics

    with services.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            return None
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        metrics = latest_metrics(session, run_id)
        by_person = run.trigger == "manual" and bool(run.requested_by)
        lines: list[str] = []
        if run.provider_job_id:
            lines.append(f"Provider job: {run.provider_job_id}")
        if metrics is not None and metrics.train_loss is not None:
            loss = f"Progress: step {metrics.step}, training loss {metrics.train_loss:.4f}"
            if metrics.valid_loss is not None:
                loss += f", validation loss {metrics.valid_loss:.4f}"
            lines.append(loss + ".")
        if run.attempts and run.error_message and run.state not in FINISHED:
            lines.append(f"The provider did not answer ({run.error_message}); trying again "
                         "automatically.")
        message = RunMessage(run_id=run_id, state=run.state, status=state_words(run.state),
                             lines=lines, started_at=_when(run.created_at),
                             started_by=run.requested_by if by_person else None,
                             trigger=("the retraining schedule" if run.trigger == "schedule"
                                      else "an admin" if by_person else "the command line"),
                             data=(snapshot_summary(snapshot) if snapshot
                                   else "the approved examples"),
                             chart_path=run.chart_path,
                             chart_posted=bool(run.chart_url), ts=run.admin_message_ts,
                             stored_ts=run.admin_message_ts,
                             shown_state=run.admin_message_state)
        scores = dict(run.eval_scores or {})
        if run.state in ("promoted", "rejected"):
            model = run.fine_tuned_model or "the new model"
            reason = str(scores.get("reason") or "").strip()
            message.verdict = (f"{model} is now the active model. {reason}" if
                               run.state == "promoted" else
                               f"{model} was not put in use. {reason}").strip()
            message.table = _table(scores)
        elif run.state in ("failed", "cancelled"):
            message.verdict = _failure(run)
    return message


def record_run_message(services, run_id: int, ts: str, state: str) -> None:  # noqa: ANN001
    """Remember the run's admin message and the state it now shows."""
    from sqlalchemy import update
    from sqlmodel import col

    from sop_pipeline.models import TrainingRun

    with services.session() as session:
        session.execute(update(TrainingRun).where(col(TrainingRun.id) == run_id)
                        .values(admin_message_ts=ts, admin_message_state=state))
        session.commit()


def runs_to_announce(services, limit: int = 20) -> list[int]:  # noqa: ANN001
    """Recent runs whose admin message was never posted or shows an older state (a crash
    between a commit and its post): posted or brought up to date at start-up."""
    from sqlmodel import col, or_, select

    from sop_pipeline.models import TrainingRun

    with services.session() as session:
        recent = select(TrainingRun.id).order_by(col(TrainingRun.id).desc()).limit(limit)
        ids = [int(i) for i in session.exec(recent)]
        if not ids:
            return []
        stale = select(TrainingRun.id).where(
            col(TrainingRun.id).in_(ids),
            or_(col(TrainingRun.admin_message_ts).is_(None),
                TrainingRun.admin_message_state != TrainingRun.state,
                col(TrainingRun.admin_message_state).is_(None)))
        return sorted(int(i) for i in session.exec(stale))
