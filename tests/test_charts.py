"""Loss charts drawn from stored training metrics, and the end-of-run chart notification."""

from __future__ import annotations

import struct
from pathlib import Path

from sop_pipeline.charts import loss_chart, loss_points, publish_run_report
from sop_pipeline.models import DatasetSnapshot, RunState, TrainingEvent, TrainingRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (after the signature and chunk header)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def make_run(services, *, metrics: bool = True) -> TrainingRun:  # noqa: ANN001
    """A finished run with the metrics a provider reported (valid loss every 5th step)."""
    with services.session() as session:
        snapshot = DatasetSnapshot(content_hash=f"hash-{metrics}")
        session.add(snapshot)
        session.flush()
        run = TrainingRun(snapshot_id=snapshot.id, state=RunState.PROMOTED, active_lock=None,
                          fine_tuned_model="ft:gpt-4o-mini:acme:sop-bot:abc")
        session.add(run)
        session.flush()
        session.add(TrainingEvent(run_id=run.id, provider_event_id="start", message="started"))
        for step in range(1, 21) if metrics else ():
            session.add(TrainingEvent(
                run_id=run.id, provider_event_id=f"m{step}", kind="metrics", step=step,
                train_loss=2.0 / step, valid_loss=(2.2 / step) if step % 5 == 0 else None))
        session.commit()
        return run


def test_loss_chart_is_drawn_from_stored_metrics(services, tmp_path: Path) -> None:  # noqa: ANN001
    run = make_run(services)
    with services.session() as session:
        train, valid = loss_points(session, run.id)
        path = loss_chart(session, run.id, tmp_path / "charts" / "loss.png")

    assert len(train) == 20 and train[0] == (1, 2.0)
    assert [step for step, _ in valid] == [5, 10, 15, 20]
    assert path == tmp_path / "charts" / "loss.png"
    width, height = png_size(path)
    assert (width, height) == (800, 450)
    assert path.stat().st_size > 5000  # real content, not an empty canvas


def test_no_metrics_means_no_chart(services, tmp_path: Path) -> None:  # noqa: ANN001
    run = make_run(services, metrics=False)
    with services.session() as session:
        assert loss_chart(session, run.id, tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()
    assert publish_run_report(services, run) is None
    assert services.notifier.sent == []


def test_publish_run_report_stores_the_path_and_notifies_admins(services) -> None:  # noqa: ANN001
    run = make_run(services)

    path = publish_run_report(services, run)

    assert path is not None and path.is_file()
    assert path.parent == Path(services.settings.data_dir) / "charts"
    with services.session() as session:
        assert session.get(TrainingRun, run.id).chart_path == str(path)
    [note] = services.notifier.sent
    assert note.kind == "chart" and note.run_id == run.id
    assert note.data["path"] == str(path)
