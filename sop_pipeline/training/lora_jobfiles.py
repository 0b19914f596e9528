"""The files of one local LoRA job directory, shared by `lora_backend` (the bot side) and
`lora_train` (the training process), so neither imports the other.

`job.json` what to train, `status.json` state under a lock, `events.jsonl` one line per event,
`cancel` a flag file the trainer checks at every step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

JOB_FILE = "job.json"
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel"
ADAPTER_DIR = "adapter"
MODELFILE = "Modelfile"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")



def read_json(path: Path) -> dict:
    """A JSON object from disk ({} when the file is missing or half-written)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(job_dir: Path) -> Iterator[None]:
    """An exclusive lock on the job directory (across threads and processes)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_status(job_dir: Path, *, only_if_active: bool = False, **changes: object) -> dict:
    """Merge `changes` into status.json under the job lock; returns the new status.

    With `only_if_active`, a job that already ended (e.g. cancelled while the trainer was
    finishing) keeps its final state: the first terminal state written wins.
    """
    with _locked(job_dir):
        status = read_json(job_dir / STATUS_FILE)
        if only_if_active and status.get("state") in TERMINAL_STATES:
            return status
        status.update(changes)
        status["updated_at"] = time.time()
        write_json_atomic(job_dir / STATUS_FILE, status)
        return status


def append_event(
    job_dir: Path, message: str, *, level: str = "info", kind: str = "message",
    step: int | None = None, train_loss: float | None = None, valid_loss: float | None = None,
) -> str:
    """Append one event to events.jsonl with the next sequential id; returns the id."""
    with _locked(job_dir):
        path = job_dir / EVENTS_FILE
        count = 0
        if path.exists():
            with path.open(encoding="utf-8") as handle:
                count = sum(1 for line in handle if line.strip())
        event_id = f"evt-{count + 1:06d}"
        record = {
            "id": event_id, "created_at": int(time.time()), "level": level, "message": message,
            "kind": kind, "step": step, "train_loss": train_loss, "valid_loss": valid_loss,
        }
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return event_id


def cancel_requested(job_dir: Path) -> bool:
    return (job_dir / CANCEL_FILE).exists()


