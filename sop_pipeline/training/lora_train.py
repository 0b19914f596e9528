"""The LoRA training itself (Hugging Face TRL `SFTTrainer` + PEFT), for `LoraBackend`.

Run as `python -m sop_pipeline.training.lora_train <job dir>` (the backend's default, so the
bot survives a crashing or killed trainer) or called as `run_job(job_dir)` in a thread. It reads
`job.json`, reports through `status.json` and `events.jsonl` and saves the adapter in
`adapter/`. torch, transformers, peft, trl and datasets are imported inside the functions
only: they are the optional `[local]` extra.

Training data is the snapshot's chat JSONL; each example becomes a conversational
prompt/completion pair (system + user -> the approved SOP), so the loss is computed on the SOP
text only, exactly what OpenAI's supervised fine-tuning optimises.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path

from sop_pipeline.training.lora_backend import (
    JOB_FILE,
    append_event,
    cancel_requested,
    read_json,
    update_status,
)

DEFAULT_BATCH_SIZE = 4
MAX_SEQUENCE_TOKENS = 4096


def load_examples(path: str | Path | None) -> list[dict]:
    """Chat JSONL -> [{"prompt": [system, user...], "completion": [last assistant]}]."""
    if not path:
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = [
            {"role": m["role"], "content": m["content"]} for m in json.loads(line)["messages"]
        ]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append({"prompt": messages[:last], "completion": [messages[last]]})
    return rows


def plan_steps(plan: dict, n_train: int) -> tuple[int, int]:
    """(batch size, max steps): "auto" epochs run LOCAL_MAX_STEPS; a number of epochs runs
    that many passes, but never more than LOCAL_MAX_STEPS (it bounds time on a small GPU)."""
    batch = plan.get("batch_size", "auto")
    batch_size = DEFAULT_BATCH_SIZE if batch in (None, "auto") else max(1, int(float(batch)))
    batch_size = max(1, min(batch_size, n_train))
    max_steps = int(plan["max_steps"])
    epochs = plan.get("n_epochs", "auto")
    if epochs not in (None, "auto"):
        per_epoch = math.ceil(n_train / batch_size)
        max_steps = min(max_steps, max(1, per_epoch * int(float(epochs))))
    return batch_size, max_steps


def _callback(job_dir: Path):  # noqa: ANN202 - TrainerCallback subclass built lazily
    """A TrainerCallback that writes metrics events and honours the cancel flag."""
    from transformers import TrainerCallback

    class JobFilesCallback(TrainerCallback):
        trained_tokens: int | None = None

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if cancel_requested(job_dir):
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            logs = logs or {}
            step = int(state.global_step)
            if "num_tokens" in logs:
                self.trained_tokens = int(logs["num_tokens"])
            if "loss" in logs:
                loss = float(logs["loss"])
                append_event(job_dir, f"Step {step}/{state.max_steps}: training loss={loss:.4f}",
                             kind="metrics", step=step, train_loss=loss)
                update_status(job_dir, only_if_active=True, step=step)
            if "eval_loss" in logs:
                loss = float(logs["eval_loss"])
                append_event(job_dir, f"Step {step}/{state.max_steps}: validation loss="
                             f"{loss:.4f}", kind="metrics", step=step, valid_loss=loss)
            return control

    return JobFilesCallback()


def _trainer(plan: dict, job_dir: Path, train_rows: list[dict], valid_rows: list[dict]):  # noqa: ANN202
    """Build the SFTTrainer with a LoRA config on every linear layer."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(plan["base_model"])
    if not tokenizer.chat_template:
        raise ValueError(
            f"{plan['base_model']} has no chat template; set LOCAL_BASE_MODEL to an instruct "
            "(chat) model.")
    model = AutoModelForCausalLM.from_pretrained(plan["base_model"])
    batch_size, max_steps = plan_steps(plan, len(train_rows))
    eval_steps = max(1, max_steps // 10)
    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    args = SFTConfig(
        output_dir=str(job_dir / "trainer"), max_steps=max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        learning_rate=float(plan["learning_rate"]), seed=int(plan["seed"]),
        logging_steps=max(1, max_steps // 100), save_strategy="no", report_to=[],
        eval_strategy="steps" if valid_rows else "no", eval_steps=eval_steps,
        max_length=MAX_SEQUENCE_TOKENS, disable_tqdm=True, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
    )
    rank = int(plan["lora_rank"])
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    callback = _callback(job_dir)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=lora,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(valid_rows) if valid_rows else None,
        callbacks=[callback],
    )
    return trainer, callback


def train(job_dir: Path) -> None:
    """Train the adapter described by job.json; raises on failure (run_job records it)."""
    plan = read_json(job_dir / JOB_FILE)
    train_rows = load_examples(plan["train_path"])
    valid_rows = load_examples(plan.get("validation_path"))
    if not train_rows:
        raise ValueError("The training file has no examples; create a new snapshot.")
    trainer, callback = _trainer(plan, job_dir, train_rows, valid_rows)
    device = str(trainer.args.device)
    append_event(job_dir, f"Training started on {device}: {len(train_rows)} training and "
                 f"{len(valid_rows)} validation examples, {trainer.args.max_steps} steps.")
    trainer.train()
    if cancel_requested(job_dir):
        update_status(job_dir, only_if_active=True, state="cancelled",
                      error_message="Cancelled on request.")
        append_event(job_dir, "Training stopped after the cancel request; no adapter saved.")
        return
    trainer.save_model(plan["adapter_dir"])
    append_event(job_dir, f"Adapter saved to {plan['adapter_dir']}; serve it as "
                 f"{plan['model_name']}.")
    update_status(job_dir, only_if_active=True, state="succeeded",
                  fine_tuned_model=plan["model_name"], trained_tokens=callback.trained_tokens,
                  adapter_dir=plan["adapter_dir"])


def run_job(job_dir: str | Path) -> None:
    """Entry point for the thread or subprocess: never raises, always leaves a final state."""
    job_dir = Path(job_dir)
    status = update_status(job_dir, only_if_active=True, state="running")
    if status.get("state") != "running":
        return  # cancelled before the worker got going
    try:
        train(job_dir)
    except Exception as exc:  # noqa: BLE001 - every failure must end up in status.json
        message = f"Local training failed: {type(exc).__name__}: {exc}"
        append_event(job_dir, message, level="error")
        (job_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        update_status(job_dir, only_if_active=True, state="failed",
                      error_code="local_training_error", error_message=message[:2000])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sop_pipeline.training.lora_train <job dir>", file=sys.stderr)
        return 2
    run_job(args[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
