"""Loss charts for training runs, and the end-of-run report the admin channel receives.

Admins judge a run by its loss curves: a validation loss that climbs while the training loss
falls means the model is memorising the approved SOPs. The chart is drawn from the metrics we
stored (`TrainingEvent` rows), so it works the same for OpenAI, Azure and local LoRA runs and
can be redrawn later. matplotlib is imported and switched to the headless Agg backend inside
the function, never at import time.
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, col, select

from sop_pipeline.models import TrainingEvent, TrainingRun
from sop_pipeline.notifications import Notification

CHART_SIZE_INCHES = (8.0, 4.5)
CHART_DPI = 100


def loss_points(session: Session, run_id: int) -> tuple[list[tuple[int, float]],
                                                         list[tuple[int, float]]]:
    """(training, validation) loss points by step; one value per step (the latest stored)."""
    query = (
        select(TrainingEvent)
        .where(TrainingEvent.run_id == run_id, TrainingEvent.kind == "metrics")
        .order_by(col(TrainingEvent.id))
    )
    train: dict[int, float] = {}
    valid: dict[int, float] = {}
    for event in session.exec(query):
        if event.step is None:
            continue
        if event.train_loss is not None:
            train[event.step] = float(event.train_loss)
        if event.valid_loss is not None:
            valid[event.step] = float(event.valid_loss)
    return sorted(train.items()), sorted(valid.items())


def loss_chart(session: Session, run_id: int, out_path: Path | str) -> Path | None:
    """Draw training and validation loss by step as a PNG; None when the run has no metrics."""
    train, valid = loss_points(session, run_id)
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: the bot runs on servers without a display
    from matplotlib.figure import Figure

    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI)
    axes = figure.add_subplot(1, 1, 1)
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", color="#1f77b4",
                  linewidth=1.2)
    if valid:
        axes.plot(*zip(*valid, strict=True), label="validation loss", color="#d62728",
                  linewidth=1.6, marker="o" if len(valid) < 30 else None, markersize=3)
    axes.set_title(f"Training run #{run_id}: loss by step")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def default_chart_path(services, run_id: int) -> Path:  # noqa: ANN001 - Services
    """Where a run's chart lives: `<data_dir>/charts/run-<id>-loss.png`."""
    return Path(services.settings.data_dir) / "charts" / f"run-{run_id}-loss.png"


def record_chart_url(services, run_id: int, url: str) -> None:  # noqa: ANN001 - Services
    """Remember where the posted chart lives, so status reports can link to it."""
    with services.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None:
            run.chart_url = url
            session.add(run)
            session.commit()


def publish_run_report(services, run: TrainingRun) -> Path | None:  # noqa: ANN001 - Services
    """After a run ends: draw its loss chart, store the path on the run, tell the admins.

    Emits `Notification(kind="chart", data={"path": ...})`, which the Slack layer uploads to
    the admin channel. A run without metrics (failed early) gets no chart and no notification.
    """
    assert run.id is not None  # a stored run always has an id
    with services.session() as session:
        path = loss_chart(session, run.id, default_chart_path(services, run.id))
        if path is None:
            return None
        stored = session.get(TrainingRun, run.id)
        if stored is not None:
            stored.chart_path = str(path)
            session.add(stored)
            session.commit()
    run.chart_path = str(path)
    services.notifier.notify(Notification(
        kind="chart", run_id=run.id,
        text=f"Loss chart for training run #{run.id} ({run.state}).",
        data={"path": str(path), "state": run.state, "fine_tuned_model": run.fine_tuned_model},
    ))
    return path
