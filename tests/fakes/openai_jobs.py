"""The OpenAI fake's fine-tuning jobs: control methods for tests (advance, metrics,
checkpoints, succeed, fail) and the /fine_tuning/jobs endpoints."""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.fakes.openai_records import (
    JOB_STATUSES,
    RESOLVED_HYPERPARAMETERS,
    TERMINAL_STATUSES,
    RecordedRequest,
    _ApiError,
    _public_job,
    _Response,
)
from tests.fakes.openai_text import (
    _rid,
    count_tokens,
)


class JobsMixin:
    """Fine-tuning jobs of `FakeOpenAI`."""

    # -- jobs (control) -------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(f"no fine-tuning job {job_id!r} in the fake") from None

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            self._job(job_id)
            event = {
                "object": "fine_tuning.job.event",
                "id": _rid("ftevent-", 12),
                "created_at": self._now(),
                "level": level,
                "message": message,
                "type": type,
                "data": data if data is not None else {},
            }
            self.job_events[job_id].append(event)
            return dict(event)

    def advance_job(self, job_id: str, to: str = "running") -> dict[str, Any]:
        """Move a job forward: validating_files -> queued -> running (-> terminal states)."""
        with self._lock:
            job = self._job(job_id)
            if to == "succeeded":
                return self.succeed_job(job_id)
            if to == "failed":
                return self.fail_job(job_id)
            if to == "cancelled":
                return self.cancel_job(job_id)
            if to not in ("validating_files", "queued", "running"):
                raise ValueError(f"unknown job status {to!r}")
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            order = JOB_STATUSES.index
            if order(to) < order(job["status"]):
                raise ValueError(f"cannot move job {job_id} back from {job['status']} to {to}")
            if job["status"] == "validating_files" and order(to) >= order("queued"):
                job["status"] = "queued"
                self.add_event(job_id, "Files validated, moving job to queued state")
            if job["status"] == "queued" and to == "running":
                job["status"] = "running"
                self._resolve_hyperparameters(job)
                job["estimated_finish"] = self._now() + 600
                self.add_event(job_id, "Fine-tuning job started")
            return dict(job)

    def _resolve_hyperparameters(self, job: dict[str, Any]) -> None:
        hp = job["hyperparameters"]
        for key, value in RESOLVED_HYPERPARAMETERS.items():
            if hp.get(key, "auto") == "auto":
                hp[key] = value
        method = job.get("method") or {}
        mtype = method.get("type")
        if mtype and isinstance(method.get(mtype), dict):
            method[mtype]["hyperparameters"] = {
                **method[mtype].get("hyperparameters", {}),
                **{k: hp[k] for k in RESOLVED_HYPERPARAMETERS},
            }

    def add_metrics(
        self,
        job_id: str,
        step: int,
        train_loss: float,
        valid_loss: float | None = None,
        *,
        total_steps: int | None = None,
        train_mean_token_accuracy: float | None = None,
        valid_mean_token_accuracy: float | None = None,
        full_valid_loss: float | None = None,
        full_valid_mean_token_accuracy: float | None = None,
    ) -> dict[str, Any]:
        """Emit a `metrics` event like the real API (auto-advances the job to running)."""
        with self._lock:
            job = self._job(job_id)
            if job["status"] in ("validating_files", "queued"):
                self.advance_job(job_id, "running")
            total = total_steps or max(step, 100)
            data: dict[str, Any] = {"step": step, "train_loss": train_loss, "total_steps": total}
            optional = {
                "valid_loss": valid_loss,
                "train_mean_token_accuracy": train_mean_token_accuracy,
                "valid_mean_token_accuracy": valid_mean_token_accuracy,
                "full_valid_loss": full_valid_loss,
                "full_valid_mean_token_accuracy": full_valid_mean_token_accuracy,
            }
            data.update({k: v for k, v in optional.items() if v is not None})
            message = f"Step {step}/{total}: training loss={train_loss:.2f}"
            if valid_loss is not None:
                message += f", validation loss={valid_loss:.2f}"
            self.job_metrics[job_id].append(data)
            return self.add_event(job_id, message, type="metrics", data=data)

    def _model_base_id(self, job: dict[str, Any], short: str) -> str:
        suffix = job.get("user_provided_suffix") or ""
        return f"ft:{job['model']}:{self.organization}:{suffix}:{short}"

    def add_checkpoint(
        self, job_id: str, step: int | None = None, metrics: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Create a checkpoint (model id `<ft model>:ckpt-step-N`), usable for chat."""
        with self._lock:
            job = self._job(job_id)
            last = self.job_metrics[job_id][-1] if self.job_metrics[job_id] else {}
            step = step if step is not None else int(last.get("step", 1))
            if metrics is None:
                metrics = {k: v for k, v in last.items() if k != "total_steps"}
                metrics.setdefault("step", float(step))
                metrics.setdefault("train_loss", 0.0)
            base = job.get("fine_tuned_model") or self._model_base_id(job, job["_short"])
            ckpt = {
                "object": "fine_tuning.job.checkpoint",
                "id": _rid("ftckpt_", 12),
                "created_at": self._now(),
                "fine_tuned_model_checkpoint": f"{base}:ckpt-step-{step}",
                "fine_tuning_job_id": job_id,
                "metrics": metrics,
                "step_number": step,
            }
            self.job_checkpoints[job_id].append(ckpt)
            self.checkpoint_models.add(ckpt["fine_tuned_model_checkpoint"])
            self.add_event(job_id, f"Checkpoint created at step {step}")
            return dict(ckpt)

    def succeed_job(
        self, job_id: str, fine_tuned_model: str | None = None, *, trained_tokens: int | None = None
    ) -> dict[str, Any]:
        """Finish a job: model registered for /models and chat, result file, checkpoint."""
        with self._lock:
            job = self._job(job_id)
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            if job["status"] != "running":
                self.advance_job(job_id, "running")
            model_id = fine_tuned_model or self._model_base_id(job, job["_short"])
            job["fine_tuned_model"] = model_id
            if not self.job_checkpoints[job_id]:
                self.add_checkpoint(job_id)
            rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
            for m in self.job_metrics[job_id]:
                rows.append(
                    ",".join(
                        "" if m.get(k) is None else str(m.get(k))
                        for k in (
                            "step",
                            "train_loss",
                            "train_mean_token_accuracy",
                            "valid_loss",
                            "valid_mean_token_accuracy",
                        )
                    )
                )
            result = self.add_file(
                ("\n".join(rows) + "\n").encode(),
                filename="step_metrics.csv",
                purpose="fine-tune-results",
            )
            job["result_files"] = [result["id"]]
            if trained_tokens is None:
                content = self.file_contents.get(job["training_file"], b"")
                epochs = job["hyperparameters"].get("n_epochs")
                epochs = epochs if isinstance(epochs, int) else 3
                text = content.decode("utf-8", "replace")
                trained_tokens = count_tokens(text, self.exact_tokens) * epochs
            job["trained_tokens"] = trained_tokens
            job["status"] = "succeeded"
            job["finished_at"] = self._now()
            job["estimated_finish"] = None
            self.register_model(model_id)
            self.add_event(job_id, f"New fine-tuned model created: {model_id}")
            self.add_event(job_id, "The job has successfully completed")
            return dict(job)

    def fail_job(
        self,
        job_id: str,
        code: str = "invalid_training_file",
        message: str = "The job failed due to an invalid training file.",
        param: str | None = "training_file",
    ) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            job["status"] = "failed"
            job["error"] = {"code": code, "message": message, "param": param}
            job["finished_at"] = self._now()
            job["estimated_finish"] = None
            self.add_event(job_id, f"Fine-tuning job failed: {message}", level="error")
            return dict(job)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job['status']}")
            job["status"] = "cancelled"
            job["finished_at"] = self._now()
            job["estimated_finish"] = None
            self.add_event(job_id, "Fine-tuning job cancelled")
            return dict(job)

    # fine-tuning

    def _check_training_file(self, file_id: Any, param: str) -> None:
        if not isinstance(file_id, str) or file_id not in self.files:
            raise _ApiError(400, f"invalid {param}: {file_id}", param=param)
        record = self.files[file_id]
        if record["purpose"] != "fine-tune":
            raise _ApiError(
                400,
                f"File {file_id} has purpose '{record['purpose']}', expected 'fine-tune'.",
                param=param,
                code="invalid_file_purpose",
            )
        if record["status"] == "error":
            raise _ApiError(
                400,
                f"File {file_id} is invalid: {record.get('status_details', 'processing failed')}",
                param=param,
                code="invalid_file",
            )
        if record["status"] != "processed":
            raise _ApiError(400, f"File {file_id} is not ready", param=param, code="file_not_ready")

    def create_job(self, rec: RecordedRequest) -> _Response:
        body = rec.json
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not model:
            raise _ApiError(
                400,
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        if not body.get("training_file"):
            raise _ApiError(
                400,
                "Missing required parameter: 'training_file'.",
                param="training_file",
                code="missing_required_parameter",
            )
        if model not in self.fine_tunable_models and model not in self.models:
            raise _ApiError(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        self._check_training_file(body["training_file"], "training_file")
        if body.get("validation_file") is not None:
            self._check_training_file(body["validation_file"], "validation_file")
        suffix = body.get("suffix")
        if suffix is not None and not (isinstance(suffix, str) and 1 <= len(suffix) <= 64):
            raise _ApiError(400, "suffix must be between 1 and 64 characters", param="suffix")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            raise _ApiError(
                400, "metadata must be an object with at most 16 keys", param="metadata"
            )
        hp_defaults = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        method = json.loads(json.dumps(body.get("method") or {}))
        mtype = method.get("type")
        if method and mtype not in ("supervised", "dpo", "reinforcement"):
            raise _ApiError(400, f"Invalid method type: {mtype!r}", param="method.type")
        if not method:
            method = {
                "type": "supervised",
                "supervised": {"hyperparameters": dict(body.get("hyperparameters") or {})},
            }
            mtype = "supervised"
        method.setdefault(mtype, {})
        method_hp = {**hp_defaults, **(method[mtype].get("hyperparameters") or {})}
        if mtype == "dpo":
            method_hp.setdefault("beta", "auto")
        method[mtype]["hyperparameters"] = method_hp
        top_hp = {k: method_hp[k] for k in hp_defaults}
        short = secrets.token_hex(4)
        seed = body.get("seed")
        job = {
            "object": "fine_tuning.job",
            "id": _rid("ftjob-", 12),
            "model": model,
            "created_at": self._now(),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": self.organization_id,
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": top_hp,
            "trained_tokens": None,
            "error": None,
            "user_provided_suffix": suffix,
            "seed": seed if isinstance(seed, int) else int(secrets.randbelow(2**31 - 1)),
            "estimated_finish": None,
            "integrations": body.get("integrations") or [],
            "method": method,
            "metadata": metadata,
            "_short": short,
            "_seq": len(self.jobs),
        }
        self.jobs[job["id"]] = job
        self.job_events[job["id"]] = []
        self.job_checkpoints[job["id"]] = []
        self.job_metrics[job["id"]] = []
        self.add_event(job["id"], f"Created fine-tuning job: {job['id']}")
        self.add_event(job["id"], f"Validating training file: {job['training_file']}")
        return _Response(200, _public_job(job))

    def list_jobs(self, rec: RecordedRequest) -> _Response:
        items = sorted(self.jobs.values(), key=lambda j: (j["created_at"], j["_seq"]), reverse=True)
        filters = {
            k[9:-1]: v[-1]
            for k, v in rec.query.items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        if rec.q("metadata") == "null":
            items = [j for j in items if j.get("metadata") is None]
        elif filters:
            items = [
                j
                for j in items
                if all((j.get("metadata") or {}).get(k) == v for k, v in filters.items())
            ]
        page, has_more = self._page([_public_job(j) for j in items], rec, default_limit=20)
        return _Response(200, {"object": "list", "data": page, "has_more": has_more})

    def _get_job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise _ApiError(
                404,
                f"Could not find fine-tuning job: {job_id}",
                param="fine_tuning_job_id",
                code="fine_tuning_job_not_found",
            )
        return job

    def retrieve_job(self, rec: RecordedRequest, job_id: str) -> _Response:
        return _Response(200, _public_job(self._get_job(job_id)))

    def cancel_job_endpoint(self, rec: RecordedRequest, job_id: str) -> _Response:
        job = self._get_job(job_id)
        if job["status"] in TERMINAL_STATUSES:
            raise _ApiError(
                400,
                f"Job {job_id} has already {job['status']} and cannot be cancelled.",
                code="job_not_cancellable",
            )
        self.cancel_job(job_id)
        return _Response(200, _public_job(job))

    def list_events(self, rec: RecordedRequest, job_id: str) -> _Response:
        self._get_job(job_id)
        items = list(reversed(self.job_events[job_id]))
        page, has_more = self._page(items, rec, default_limit=20)
        return _Response(200, {"object": "list", "data": page, "has_more": has_more})

    def list_checkpoints(self, rec: RecordedRequest, job_id: str) -> _Response:
        self._get_job(job_id)
        items = list(reversed(self.job_checkpoints[job_id]))
        page, has_more = self._page(items, rec, default_limit=10)
        return _Response(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": has_more,
            },
        )
