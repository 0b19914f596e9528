"""Open-weights fine-tuning (LoRA) as a `TrainingBackend`, on the plant's own machine.

OpenAI stops new fine-tuning jobs in January 2027, so this backend trains a LoRA adapter for an
open-weights chat model (LOCAL_BASE_MODEL) from the very same snapshot JSONL files. The adapter
is then served by an OpenAI-compatible server (vLLM `--enable-lora`, or Ollama) that
OPENAI_BASE_URL points at; the "fine-tuned model id" is simply the adapter's served name.

Everything about a job lives in files under `LOCAL_MODEL_DIR/<job id>/`, never only in memory:

- `job.json`     what to train (written once, read by the training process),
- `status.json`  state, model name, error and the pid doing the work (updated under a lock),
- `events.jsonl` one line per event (messages and loss metrics), appended by the trainer,
- `adapter/`     the trained adapter and tokenizer, once the job succeeded,
- `cancel`       a flag file; the trainer stops at the next step when it appears.

That is what lets a restarted bot answer `job_status`, `events` and `find_job` for a job it
started before, and notice a job whose process died with it. This module never imports torch
or transformers: the training code in `lora_train.py` does, inside its functions, so the default
install stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path, PurePosixPath
from typing import Literal

from sop_pipeline.training.backend import (
    BackendError,
    JobEvent,
    JobSpec,
    JobStatus,
    UploadedFile,
)
from sop_pipeline.training.lora_jobfiles import (  # noqa: F401 - re-exported for callers
    ADAPTER_DIR,
    CANCEL_FILE,
    EVENTS_FILE,
    JOB_FILE,
    MODELFILE,
    STATUS_FILE,
    TERMINAL_STATES,
    append_event,
    cancel_requested,
    read_json,
    update_status,
    write_json_atomic,
)

Runner = Literal["subprocess", "thread"]

LOG_FILE = "train.log"
FILES_DIR = "_files"

ACTIVE_STATES = ("validating_files", "queued", "running")
REQUIRED_MODULES = ("torch", "transformers", "peft", "trl", "datasets")
START_GRACE_SECONDS = 300  # a queued job with no process after this long was never started

# Training threads/processes started by this Python process, shared by every backend instance
# so a re-created backend (the lifecycle makes one per tick) still sees and reaps them.
_THREADS: dict[str, threading.Thread] = {}
_PROCESSES: dict[str, subprocess.Popen] = {}
_REGISTRY_LOCK = threading.Lock()

INSTALL_HINT = (
    "The local LoRA backend needs the optional training libraries; install them with "
    "`pip install -e '.[local]'` on the training machine, or set TRAINING_BACKEND to openai."
)


# --- helpers -------------------------------------------------------------------------------------


def missing_dependencies() -> list[str]:
    """The training libraries that are not installed (checked without importing them)."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def file_id_for(path: Path) -> str:
    """Stable file id for a local file: a hash of its absolute path."""
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:24]
    return f"file-local-{digest}"


def _check_jsonl(path: Path) -> str | None:
    """None when every line is a chat example with an assistant message, else a sentence."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text; create a new snapshot with `sop-bot datasets snapshot`."
    count = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
            roles = [m["role"] for m in example["messages"]]
        except (ValueError, KeyError, TypeError):
            return (f"Line {number} of {path.name} is not a chat example with messages; "
                    "check it with `sop-bot datasets check`.")
        if "assistant" not in roles:
            return f"Line {number} of {path.name} has no assistant message; fix or remove it."
        count += 1
    if not count:
        return f"{path.name} has no examples; approve some SOPs and create a new snapshot."
    return None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _number(value: object, default: float) -> float:
    try:  # any JSON value: float() raises TypeError/ValueError for what it cannot convert
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


# --- the backend -------------------------------------------------------------------------------


class LoraBackend:
    """LoRA fine-tuning with Hugging Face TRL + PEFT, one job directory per run.

    `runner="subprocess"` (the default) trains in a separate Python process, so a crash in
    CUDA code or an out-of-memory kill never takes the bot down and `cancel` can stop it;
    `runner="thread"` trains inside this process (handy on a laptop and in tests).
    """

    name = "local"

    def __init__(self, services, *, runner: Runner = "subprocess") -> None:  # noqa: ANN001
        self.settings = services.settings
        self.runner: Runner = runner

    # -- paths --

    @property
    def root(self) -> Path:
        return Path(self.settings.local_model_dir)

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith((".", "_")):
            raise BackendError(f"{job_id!r} is not a local training job id.", code="not_found")
        return self.root / job_id

    # -- files --

    def upload(self, path: Path | bytes, snapshot_hash: str | None = None, *,
               kind: str | None = None) -> UploadedFile:
        """Register a snapshot file by path (nothing is copied: the snapshot is immutable; the
        id comes from the path, so registering it again after a crash gives the same id)."""
        if isinstance(path, bytes):  # the lifecycle always passes the materialised file
            raise BackendError("The local backend registers snapshot files by path, not bytes; "
                               "pass the snapshot file's path.", code="invalid_file")
        path = Path(path)
        if not path.is_file():
            raise BackendError(
                f"Training file {path} does not exist; create a snapshot with "
                "`sop-bot datasets snapshot` first.", code="file_not_found")
        file_id = file_id_for(path)
        problem = _check_jsonl(path)
        status = "error" if problem else "processed"
        record = {"path": str(path.resolve()), "status": status, "error": problem}
        write_json_atomic(self.root / FILES_DIR / f"{file_id}.json", record)
        return UploadedFile(id=file_id, status=status, error=problem)

    def file_status(self, file_id: str) -> UploadedFile:
        record = read_json(self.root / FILES_DIR / f"{file_id}.json")
        if not record:
            raise BackendError(f"Local file {file_id} is not registered; upload it again.",
                               code="file_not_found")
        if not Path(record["path"]).is_file():
            return UploadedFile(id=file_id, status="error", error=(
                f"{record['path']} was removed; create a new snapshot with "
                "`sop-bot datasets snapshot`."))
        return UploadedFile(id=file_id, status=record["status"], error=record.get("error"))

    def _file_path(self, file_id: str | None) -> str | None:
        if not file_id:
            return None
        uploaded = self.file_status(file_id)
        if uploaded.status != "processed":
            raise BackendError(uploaded.error or f"File {file_id} is not usable.",
                               code="invalid_training_file")
        return read_json(self.root / FILES_DIR / f"{file_id}.json")["path"]

    # -- jobs --

    def _base_model(self, spec: JobSpec) -> str:
        """LOCAL_BASE_MODEL; the spec's base model only when it is not an OpenAI model name."""
        if self.settings.local_base_model:
            return self.settings.local_base_model
        if spec.base_model and not spec.base_model.startswith(("gpt-", "ft:", "o1", "o3")):
            return spec.base_model
        raise BackendError(
            "LOCAL_BASE_MODEL is not set; set it to a local directory or a Hugging Face model "
            "id of an open-weights chat model (for example Qwen/Qwen2.5-1.5B-Instruct).",
            code="local_base_model_missing")

    def _training_plan(self, spec: JobSpec, base_model: str) -> dict:
        """job.json: everything lora_train needs, so the job can run in another process."""
        hyper = spec.hyperparameters or {}
        return {
            "base_model": base_model,
            "train_path": self._file_path(spec.training_file_id),
            "validation_path": self._file_path(spec.validation_file_id),
            "lora_rank": self.settings.local_lora_rank,
            "max_steps": self.settings.local_max_steps,
            "n_epochs": hyper.get("n_epochs", "auto"),
            "batch_size": hyper.get("batch_size", "auto"),
            "learning_rate": 2e-4 * _number(hyper.get("learning_rate_multiplier"), 1.0),
            "seed": spec.seed if spec.seed is not None else 42,
            "max_seq_tokens": self.settings.local_max_seq_tokens,
            "long_examples": self.settings.local_long_examples,
            "base_gguf_file": self.settings.local_base_gguf_file,
            "cpu_max_params_m": self.settings.local_cpu_max_params_m,
            "server": self.settings.local_server,
            "ollama_base": self.settings.local_ollama_base,
        }

    def start_job(self, spec: JobSpec) -> JobStatus:
        """Write the job directory and start training in the background; returns "queued".
        The settings are checked before the installed packages, so the first error is the
        same on every machine."""
        base_model = self._base_model(spec)
        missing = missing_dependencies()
        if missing:
            raise BackendError(f"{INSTALL_HINT} (missing: {', '.join(missing)})",
                               code="local_dependencies_missing")
        run_id = (spec.metadata or {}).get("run_id")
        job_id = f"lora-{run_id if run_id is not None else 'x'}-{uuid.uuid4().hex[:8]}"
        job_dir = self.job_dir(job_id)
        plan = self._training_plan(spec, base_model)
        plan.update(job_id=job_id, model_name=f"{spec.suffix or 'sop-bot'}-{job_id}",
                    adapter_dir=str((job_dir / ADAPTER_DIR).resolve()))
        write_json_atomic(job_dir / JOB_FILE, plan)
        update_status(job_dir, id=job_id, state="queued", created_at=int(time.time()),
                      metadata=dict(spec.metadata or {}), base_model=base_model,
                      runner=self.runner, pid=None, fine_tuned_model=None)
        append_event(job_dir, f"Job created: LoRA rank {plan['lora_rank']} on {base_model}.")
        try:
            self._launch(job_id, job_dir)
        except OSError as exc:
            update_status(job_dir, state="failed", error_code="local_launch_failed",
                          error_message=f"The training process could not start: {exc}.")
            raise BackendError(f"The local training process could not start ({exc}); check "
                               "disk space and permissions of LOCAL_MODEL_DIR.",
                               code="local_launch_failed") from exc
        return self.job_status(job_id)

    def _launch(self, job_id: str, job_dir: Path) -> None:
        if self.runner == "thread":
            from sop_pipeline.training import lora_train

            thread = threading.Thread(target=lora_train.run_job, args=(job_dir,),
                                      name=f"lora-{job_id}", daemon=True)
            with _REGISTRY_LOCK:
                _THREADS[job_id] = thread
            update_status(job_dir, pid=os.getpid())
            thread.start()
            return
        package_root = str(Path(__file__).resolve().parents[2])  # importable from any cwd
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                      if p)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": python_path}
        with (job_dir / LOG_FILE).open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - our own module, no shell
                [sys.executable, "-m", "sop_pipeline.training.lora_train", str(job_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )
        with _REGISTRY_LOCK:
            _PROCESSES[job_id] = process
        update_status(job_dir, pid=process.pid)

    def _worker_alive(self, job_id: str, status: dict) -> bool:
        """Is something still working on this job? (False after the bot or machine restarted.)"""
        with _REGISTRY_LOCK:
            thread = _THREADS.get(job_id)
            process = _PROCESSES.get(job_id)
        if thread is not None:
            return thread.is_alive()
        if process is not None:
            return process.poll() is None
        pid = status.get("pid")
        if pid is None:  # between writing the job and starting the worker
            return time.time() - _number(status.get("updated_at"), 0) < START_GRACE_SECONDS
        if status.get("runner") == "thread" and int(pid) == os.getpid():
            return False  # a thread of ours we no longer know: it died with an earlier backend
        return _pid_alive(pid)

    def job_status(self, job_id: str) -> JobStatus:
        job_dir = self.job_dir(job_id)
        status = read_json(job_dir / STATUS_FILE)
        if not status:
            raise BackendError(f"There is no local training job {job_id} in "
                               f"{self.root}; check LOCAL_MODEL_DIR.", code="not_found")
        if status.get("state") in ACTIVE_STATES and not self._worker_alive(job_id, status):
            status = update_status(
                job_dir, only_if_active=True, state="failed", error_code="interrupted",
                error_message=("The local training process stopped before it finished (the "
                               "bot or the machine restarted, or it was killed); start a new "
                               "run with `sop-bot train`."))
        return _to_job_status(status)

    def find_job(self, snapshot_hash: str) -> JobStatus | None:
        """The newest job created for this snapshot, found by scanning the status files."""
        if not self.root.is_dir():
            return None
        matches = []
        for status_path in self.root.glob(f"*/{STATUS_FILE}"):
            status = read_json(status_path)
            if (status.get("metadata") or {}).get("snapshot_hash") == snapshot_hash:
                matches.append((_number(status.get("created_at"), 0), status_path.parent.name))
        if not matches:
            return None
        return self.job_status(max(matches)[1])

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        path = self.job_dir(job_id) / EVENTS_FILE
        if not path.exists():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            events.append(JobEvent(
                id=record["id"], created_at=int(record.get("created_at") or 0),
                level=record.get("level", "info"), message=record.get("message", ""),
                kind=record.get("kind", "message"), step=record.get("step"),
                train_loss=record.get("train_loss"), valid_loss=record.get("valid_loss")))
        if after:
            ids = [event.id for event in events]
            if after in ids:
                events = events[ids.index(after) + 1:]
        return events

    def checkpoints(self, job_id: str) -> list[dict]:
        """The final adapter as the one checkpoint (intermediate ones are not kept)."""
        status = self.job_status(job_id)
        adapter = self.job_dir(job_id) / ADAPTER_DIR
        if status.state != "succeeded" or not adapter.is_dir():
            return []
        metrics = [e for e in self.events(job_id) if e.kind == "metrics"]
        last_step = max((e.step or 0 for e in metrics), default=0)
        return [{"id": f"{job_id}-final", "fine_tuned_model_checkpoint": status.fine_tuned_model,
                 "step_number": last_step, "path": str(adapter)}]

    def cancel(self, job_id: str) -> JobStatus:
        """Ask the trainer to stop at its next step and mark the job cancelled now."""
        job_dir = self.job_dir(job_id)
        if not (job_dir / STATUS_FILE).exists():
            raise BackendError(f"There is no local training job {job_id}.", code="not_found")
        (job_dir / CANCEL_FILE).touch()
        status = update_status(job_dir, only_if_active=True, state="cancelled",
                               error_message="Cancelled on request.")
        if status.get("state") == "cancelled":
            append_event(job_dir, "Cancellation requested; training stops at the next step.")
        return _to_job_status(status)

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until this process's worker for the job ends (CLI and tests; not the bot)."""
        with _REGISTRY_LOCK:
            thread = _THREADS.get(job_id)
            process = _PROCESSES.get(job_id)
        if thread is not None:
            thread.join(timeout)
        elif process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        return self.job_status(job_id)

    def adapter_path(self, job_id: str) -> Path:
        """Where the trained adapter is (what vLLM's `--lora-modules name=path` needs)."""
        return self.job_dir(job_id) / ADAPTER_DIR


def load_adapter_into_server(settings, model_name: str, adapter_path: Path | str) -> bool:  # noqa: ANN001
    """Ask a vLLM server (OPENAI_BASE_URL) to serve a freshly trained adapter, best effort.

    vLLM started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` loads
    adapters at runtime through `POST /v1/load_lora_adapter`; without it the adapter must be
    listed in `--lora-modules` at start-up. Returns True when the server serves the adapter.
    """
    if not settings.openai_base_url or settings.local_server != "vllm":
        return False
    url = settings.openai_base_url.rstrip("/") + "/load_lora_adapter"
    served = server_adapter_path(settings, adapter_path)
    body = json.dumps({"lora_name": model_name, "lora_path": served}).encode()
    headers = {"Content-Type": "application/json"}
    key = settings.secret("openai_api_key")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.openai_timeout_seconds):  # noqa: S310
            return True
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        return exc.code == 400 and "already" in detail.lower()
    except (urllib.error.URLError, OSError):
        return False


def server_adapter_path(settings, adapter_path: Path | str) -> str:  # noqa: ANN001 - Settings
    """The adapter's path as the serving host sees it: LOCAL_MODEL_DIR is mounted there as
    LOCAL_SERVER_ADAPTER_DIR (a shared volume); unset, both see the same path."""
    if not settings.local_server_adapter_dir:
        return str(adapter_path)
    path = Path(adapter_path).resolve()
    try:
        relative = path.relative_to(Path(settings.local_model_dir).resolve())
    except ValueError:
        return str(path)  # not under LOCAL_MODEL_DIR: nothing to translate
    return str(PurePosixPath(settings.local_server_adapter_dir) / relative.as_posix())


def _to_job_status(status: dict) -> JobStatus:
    return JobStatus(
        id=str(status.get("id")), state=str(status.get("state", "failed")),
        fine_tuned_model=status.get("fine_tuned_model"),
        trained_tokens=status.get("trained_tokens"), error_code=status.get("error_code"),
        error_message=status.get("error_message"), metadata=dict(status.get("metadata") or {}),
    )
