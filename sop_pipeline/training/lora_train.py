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

from sop_pipeline.training.lora_jobfiles import (
    ADAPTER_DIR,
    JOB_FILE,
    MODELFILE,
    append_event,
    cancel_requested,
    read_json,
    update_status,
)

DEFAULT_BATCH_SIZE = 4
DEFAULT_SEQ_TOKENS = 4096
# Architectures whose safetensors LoRA adapters Ollama imports with ADAPTER (Ollama's
# docs/import.md: Llama, Mistral, Gemma); others need vLLM.
OLLAMA_ADAPTER_FAMILIES = ("llama", "mistral", "mixtral", "gemma", "gemma2")


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


def choose_device(*, cuda: bool, bf16: bool, mps: bool) -> tuple[str, dict]:
    """Device and the SFTConfig precision flags: bf16 where the GPU has it, fp16 on older
    NVIDIA GPUs, Apple's GPU (MPS) in float32 where available, else the CPU."""
    if cuda:
        return "cuda", ({"bf16": True} if bf16 else {"fp16": True})
    if mps:
        return "mps", {}
    return "cpu", {}


def _detect_device() -> tuple[str, dict]:
    import torch

    cuda = bool(torch.cuda.is_available())
    mps_backend = getattr(torch.backends, "mps", None)
    return choose_device(cuda=cuda, bf16=cuda and bool(torch.cuda.is_bf16_supported()),
                         mps=bool(mps_backend and mps_backend.is_available()))


def _load_kwargs(plan: dict) -> dict:
    return {"gguf_file": plan["base_gguf_file"]} if plan.get("base_gguf_file") else {}


def _model_kwargs(plan: dict) -> dict:
    """A GGUF base is unpacked into dense weights: LoRA trains on those (transformers refuses
    to train through its packed GGUF layers)."""
    if not plan.get("base_gguf_file"):
        return {}
    from transformers import GgufConfig

    file = plan["base_gguf_file"]
    return {"gguf_file": file, "quantization_config": GgufConfig(gguf_file=file, dequantize=True)}


def check_model_fits(plan: dict, config, device: str) -> None:  # noqa: ANN001 - PretrainedConfig
    """Refuse, with what to do, a base model Ollama cannot take or the CPU cannot train."""
    family = str(getattr(config, "model_type", "") or "")
    if plan.get("server") == "ollama" and family not in OLLAMA_ADAPTER_FAMILIES:
        raise ValueError(
            f"Ollama cannot load a LoRA adapter for a {family or 'unknown'} base model (it takes "
            f"adapters for {', '.join(OLLAMA_ADAPTER_FAMILIES)} only); set LOCAL_SERVER=vllm "
            "or choose a Llama, Mistral or Gemma LOCAL_BASE_MODEL.")
    if device != "cpu":
        return
    millions = count_parameters(config) / 1e6
    limit = int(plan.get("cpu_max_params_m") or 1000)
    if millions > limit:
        raise ValueError(
            f"No GPU was found and {plan['base_model']} has {millions:,.0f}M parameters, more "
            f"than LOCAL_CPU_MAX_PARAMS_M ({limit:,}M) allows on the CPU; train on a machine "
            "with an NVIDIA GPU or Apple silicon, choose a smaller LOCAL_BASE_MODEL, or raise "
            "LOCAL_CPU_MAX_PARAMS_M if a CPU run of many hours is acceptable.")


def count_parameters(config) -> int:  # noqa: ANN001 - PretrainedConfig
    """Parameters of the model `config` describes, without allocating its weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _token_count(tokenizer, row: dict) -> int:  # noqa: ANN001
    encoded = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return len(ids)


def long_examples(tokenizer, rows: list[dict], max_tokens: int) -> tuple[int, int]:  # noqa: ANN001
    """(how many examples are longer than `max_tokens`, the longest length in tokens)."""
    lengths = [_token_count(tokenizer, row) for row in rows]
    return sum(1 for n in lengths if n > max_tokens), max(lengths, default=0)


def report_long_examples(job_dir: Path, plan: dict, tokenizer, rows: list[dict]) -> None:  # noqa: ANN001
    """Say how many examples exceed the sequence length before training (or refuse the run):
    never cut silently."""
    max_tokens = int(plan.get("max_seq_tokens") or DEFAULT_SEQ_TOKENS)
    n_long, longest = long_examples(tokenizer, rows, max_tokens)
    if not n_long:
        return
    what = (f"{n_long} of {len(rows)} training example(s) are longer than "
            f"LOCAL_MAX_SEQ_TOKENS ({max_tokens:,} tokens; the longest has {longest:,})")
    if plan.get("long_examples") == "refuse":
        raise ValueError(f"{what}, and LOCAL_LONG_EXAMPLES=refuse. Raise LOCAL_MAX_SEQ_TOKENS "
                         "(needs more GPU memory), retract the long SOPs, or set "
                         "LOCAL_LONG_EXAMPLES=truncate.")
    append_event(job_dir, f"{what}: they are trained on their first {max_tokens:,} tokens "
                 "only. Raise LOCAL_MAX_SEQ_TOKENS or set LOCAL_LONG_EXAMPLES=refuse to stop "
                 "such runs.", level="warning")


def write_modelfile(job_dir: Path, plan: dict) -> Path:
    """The Ollama Modelfile next to the adapter: the same base weights plus the adapter."""
    base = plan.get("ollama_base") or plan["base_model"]
    path = job_dir / MODELFILE
    path.write_text(f"FROM {base}\nADAPTER ./{ADAPTER_DIR}\n", encoding="utf-8")
    return path


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
    """Build the SFTTrainer with a LoRA config on every linear layer (after the checks that
    need only the config and the tokenizer, so a refusal costs no model load)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    extra = _load_kwargs(plan)
    device, precision = _detect_device()
    check_model_fits(plan, AutoConfig.from_pretrained(plan["base_model"], **extra), device)
    tokenizer = AutoTokenizer.from_pretrained(plan["base_model"], **extra)
    if not tokenizer.chat_template:
        raise ValueError(
            f"{plan['base_model']} has no chat template; set LOCAL_BASE_MODEL to an instruct "
            "(chat) model.")
    report_long_examples(job_dir, plan, tokenizer, train_rows + valid_rows)
    model = AutoModelForCausalLM.from_pretrained(plan["base_model"], **_model_kwargs(plan))
    batch_size, max_steps = plan_steps(plan, len(train_rows))
    eval_steps = max(1, max_steps // 10)
    args = SFTConfig(
        output_dir=str(job_dir / "trainer"), max_steps=max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        learning_rate=float(plan["learning_rate"]), seed=int(plan["seed"]),
        logging_steps=max(1, max_steps // 100), save_strategy="no", report_to=[],
        eval_strategy="steps" if valid_rows else "no", eval_steps=eval_steps,
        max_length=int(plan.get("max_seq_tokens") or DEFAULT_SEQ_TOKENS), disable_tqdm=True,
        use_cpu=device == "cpu", dataloader_num_workers=0, **precision,
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
    if plan.get("server") == "ollama":
        modelfile = write_modelfile(job_dir, plan)
        append_event(job_dir, f"Ollama: run `ollama create {plan['model_name']} -f {modelfile}` "
                     "on the Ollama host, then the evaluation gate can reach it.")
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
