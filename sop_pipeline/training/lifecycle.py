"""The training-run lifecycle: a state machine stored in `TrainingRun`, advanced step by step.

    preparing -> uploading -> validating_files -> queued -> running
              -> succeeded -> evaluating -> promoted | rejected
              (or failed | cancelled at any point)

This module is the facade other code imports; the rooms behind it:

* `runs`  - the run records: look-ups, the committed conditional transition, cancel, summary.
* `start` - the refusals, the dataset snapshot and the run row (`start_run`).
* `steps` - `advance`/`reconcile` and the per-state steps (prepare, upload, evaluate), backoff.
* `jobs`  - the provider-job steps: wait for files, create or adopt the job, poll, events.
"""

from __future__ import annotations

from sop_pipeline.training.jobs import FILE_WAIT_POLLS, FILE_WAIT_SECONDS, POLLED_STATES
from sop_pipeline.training.runs import (
    LifecycleError,
    Sleep,
    _base_model,
    _clear_backoff,
    _fail,
    _load,
    _notify,
    _now,
    _snapshot,
    _transition,
    active_run,
    active_run_ids,
    cancel_run,
    get_run,
    latest_metrics,
    list_runs,
    run_events,
    run_summary,
)
from sop_pipeline.training.start import TRAINED_STATES, StartResult, start_run, sunset_refusal
from sop_pipeline.training.steps import (
    MAX_BACKOFF_SECONDS,
    MAX_STEPS_PER_ADVANCE,
    advance,
    reconcile,
)

__all__ = [
    "FILE_WAIT_POLLS", "FILE_WAIT_SECONDS", "MAX_BACKOFF_SECONDS", "MAX_STEPS_PER_ADVANCE",
    "POLLED_STATES", "TRAINED_STATES", "LifecycleError", "Sleep", "StartResult",
    "_base_model", "_clear_backoff", "_fail", "_load", "_notify", "_now", "_snapshot",
    "_transition", "active_run", "active_run_ids", "advance", "cancel_run", "get_run",
    "latest_metrics", "list_runs", "reconcile", "run_events", "run_summary", "start_run",
    "sunset_refusal",
]
