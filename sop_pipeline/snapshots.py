"""Dataset snapshots: the approved examples frozen into a row that holds the exact JSONL bytes
(gzip-compressed), so any instance sharing the database can upload them; the same content
always maps to the same row. `materialise` writes them out as files when a backend or a
person needs files, `export_dataset` where a person asks.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session, col, select

from sop_pipeline.dataset import (
    MIN_EXAMPLES_FOR_VALIDATION,
    OPENAI_MIN_TRAIN_EXAMPLES,
    TRAIN_FILE,
    VALIDATION_FILE,
    DatasetError,
    DatasetReport,
    check_dataset,
    jsonl_text,
    split_examples,
)
from sop_pipeline.examples import dialect_insert, eval_holdout_ids
from sop_pipeline.models import DatasetSnapshot, ExampleStatus, TrainingExample
from sop_pipeline.settings import Settings


def _trainable_examples(
    session: Session, settings: Settings, example_ids: Sequence[int] | None
) -> list[TrainingExample]:
    query = select(TrainingExample).where(TrainingExample.status == ExampleStatus.APPROVED)
    approved = list(session.exec(query.order_by(col(TrainingExample.id))))
    if example_ids is not None:
        wanted = set(example_ids)
        found = [ex for ex in approved if ex.id in wanted]
        missing = wanted - {ex.id for ex in found}
        if missing:
            shown = ", ".join(f"#{i}" for i in sorted(missing))
            raise DatasetError(
                f"Example(s) {shown} do not exist or are retracted; "
                "list approved examples with `sop-bot examples list`."
            )
        return found
    held_out = eval_holdout_ids(approved, settings)
    return [ex for ex in approved if ex.id not in held_out]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per process and thread: two instances may write the same snapshot at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _ensure_file(path: Path, data: bytes) -> None:
    """Write the file unless it already holds exactly these bytes (snapshots are immutable)."""
    if path.exists() and path.read_bytes() == data:
        return
    _write_atomic(path, data)


def _pack(text: str) -> bytes:
    """gzip without a timestamp: the same JSONL always packs to the same bytes."""
    return gzip.compress(text.encode("utf-8"), mtime=0)


class SnapshotDataMissing(DatasetError):
    """The snapshot's JSONL was lost before it moved into the database (migration 0002)."""


def snapshot_bytes(snapshot: DatasetSnapshot) -> tuple[bytes, bytes | None]:
    """The exact train and validation JSONL bytes of a snapshot (validation None if none)."""
    if snapshot.train_jsonl_gz is None:
        raise SnapshotDataMissing(
            f"The data of dataset snapshot #{snapshot.id} is missing (its files were gone "
            "before snapshots moved into the database); start a new run with "
            "`sop-bot retrain --force` to make a new snapshot.")
    train = gzip.decompress(snapshot.train_jsonl_gz)
    validation = (gzip.decompress(snapshot.validation_jsonl_gz)
                  if snapshot.validation_jsonl_gz is not None else None)
    return train, validation


def materialise(snapshot: DatasetSnapshot, folder: Path) -> tuple[Path, Path | None]:
    """Write the snapshot's files under `folder/<hash[:12]>/` (kept if already identical) and
    return their paths: a local copy for a backend that uploads files. Any instance can do
    this; nothing but the database is needed."""
    train, validation = snapshot_bytes(snapshot)
    where = folder / snapshot.content_hash[:12]
    train_path = where / TRAIN_FILE
    _ensure_file(train_path, train)
    validation_path = None
    if validation is not None:
        validation_path = where / VALIDATION_FILE
        _ensure_file(validation_path, validation)
    return train_path, validation_path


def _check_written(train_text: str, validation_text: str, settings: Settings) -> DatasetReport:
    """Check the files' content; raise DatasetError with the findings if unusable."""
    minimum = min(settings.sop_min_examples, OPENAI_MIN_TRAIN_EXAMPLES)
    report = check_dataset(train_text.splitlines(), settings, min_examples=minimum)
    problems = report.error_sentences()
    if validation_text:
        validation = check_dataset(validation_text.splitlines(), settings, min_examples=1)
        problems += [f"validation {s}" for s in validation.error_sentences()]
    if problems:
        raise DatasetError("The dataset cannot be used for training: " + " ".join(problems))
    return report


def create_snapshot(
    session: Session, settings: Settings, *, example_ids: Sequence[int] | None = None
) -> DatasetSnapshot:
    """Freeze approved, non-held-out examples (or `example_ids`) into a versioned snapshot.

    Stores the bytes of `train.jsonl` (and `validation.jsonl` when there are enough examples)
    with a DatasetSnapshot row in the caller's transaction (flushed, not committed). The same
    content returns the existing row, also when two processes snapshot at once. Raises
    DatasetError when there are too few examples or the files would fail the fine-tuning
    API's checks.
    """
    examples = _trainable_examples(session, settings, example_ids)
    if len(examples) < settings.sop_min_examples:
        missing = settings.sop_min_examples - len(examples)
        raise DatasetError(
            f"Only {len(examples)} approved example(s) can be used for training, and at least "
            f"{settings.sop_min_examples} are needed; approve {missing} more SOP(s) first."
        )
    train, validation = split_examples(examples, settings)
    system_prompt = settings.sop_system_prompt
    train_text = jsonl_text(train, system_prompt)
    validation_text = jsonl_text(validation, system_prompt)
    report = _check_written(train_text, validation_text, settings)
    digest = hashlib.sha256(
        (train_text + "\0validation\0" + validation_text).encode("utf-8")
    ).hexdigest()
    values = {
        "content_hash": digest,
        "example_ids": [ex.id for ex in examples],
        "train_example_ids": [ex.id for ex in train],
        "validation_example_ids": [ex.id for ex in validation],
        "n_train": len(train),
        "n_validation": len(validation),
        "token_count": report.dataset_tokens,
        "estimated_epochs": report.epochs,
        "estimated_cost_usd": report.estimated_cost_usd,
        "system_prompt": system_prompt,
        "train_jsonl_gz": _pack(train_text),
        "validation_jsonl_gz": _pack(validation_text) if validation else None,
    }
    return _insert_or_get_snapshot(session, values)


def _insert_or_get_snapshot(session: Session, values: dict) -> DatasetSnapshot:
    """INSERT ... ON CONFLICT DO NOTHING on the hash, then read the row (race-safe)."""
    stmt = dialect_insert(session, DatasetSnapshot).values(**values)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["content_hash"]))
    snapshot = session.exec(
        select(DatasetSnapshot).where(DatasetSnapshot.content_hash == values["content_hash"])
    ).one()
    if snapshot.train_jsonl_gz is None:  # its files were lost before 0002_llm: store them now
        snapshot.train_jsonl_gz = values["train_jsonl_gz"]
        snapshot.validation_jsonl_gz = values["validation_jsonl_gz"]
        session.add(snapshot)
    session.flush()
    return snapshot


def snapshot_summary(snapshot: DatasetSnapshot) -> str:
    """One line for Slack and the CLI, e.g. "12 examples (11 train, 1 validation), ..."."""
    total = snapshot.n_train + snapshot.n_validation
    if snapshot.n_validation:
        parts = f"{snapshot.n_train} train, {snapshot.n_validation} validation"
    else:
        parts = f"{snapshot.n_train} train, no validation set: fewer than "
        parts += f"{MIN_EXAMPLES_FOR_VALIDATION} examples"
    epochs = snapshot.estimated_epochs
    return (
        f"{total} examples ({parts}), {snapshot.token_count:,} tokens, "
        f"about {epochs} epoch{'s' if epochs != 1 else ''}, "
        f"estimated cost ${snapshot.estimated_cost_usd:,.2f}"
    )


def export_dataset(
    session: Session, settings: Settings, out: Path, validation_out: Path | None = None
) -> DatasetSnapshot:
    """Create (or reuse) a snapshot and write its files to `out` (and `validation_out`).

    When the snapshot has no validation set, `validation_out` is left untouched; the caller
    can tell from `snapshot.n_validation`.
    """
    snapshot = create_snapshot(session, settings)
    train, validation = snapshot_bytes(snapshot)
    _write_atomic(out, train)
    if validation_out is not None and validation is not None:
        _write_atomic(validation_out, validation)
    return snapshot
