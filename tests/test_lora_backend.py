"""The open-weights LoRA backend: real TRL/PEFT training steps on the CPU with a tiny model.

The base model (a 2-layer Llama with random weights) and its tokenizer (trained on the fixture
SOPs) are built in the test, so nothing is downloaded. The training libraries are an optional
extra; the tests that train are skipped with a clear reason when they are not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sop_pipeline.dataset import chat_example
from sop_pipeline.services import build_services
from sop_pipeline.training.backend import BackendError, JobSpec
from sop_pipeline.training.lora_backend import (
    LoraBackend,
    load_adapter_into_server,
    read_json,
    update_status,
    write_json_atomic,
)
from sop_pipeline.training.lora_train import load_examples, plan_steps
from tests.conftest import DATA_DIR, make_settings

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SYSTEM = "You are a Quality analyst who writes Standard Operating Procedures (SOPs)."
WAIT_SECONDS = 120  # generous upper bound; a tiny run takes a few seconds
SPECIALS = ["<unk>", "<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def sop_texts() -> list[tuple[str, str]]:
    """(prompt, SOP text) pairs from the fixture SOPs, shortened to keep training quick."""
    pairs = []
    for path in sorted((DATA_DIR / "sops").glob("*")):
        text = path.read_text(encoding="utf-8")[:1200]
        title = path.stem.split("_", 1)[-1].replace("_", " ")
        pairs.append((f"Write an SOP for {title}", text))
    if len(pairs) < 4:  # fixtures not there: a few synthetic SOPs still exercise training
        pairs = [(f"Write an SOP for cleaning tank {i}",
                  f"Cleaning of Tank {i}\n1.0 Objective\nTo clean tank {i}.\n5.0 Procedure\n"
                  "5.1 Drain the tank.\n5.2 Rinse with purified water.") for i in range(8)]
    return pairs


@pytest.fixture(scope="module")
def training_libs():
    """Skip (with the reason) unless the optional [local] training libraries are installed."""
    reason = "the LoRA backend needs the [local] extra: pip install -e '.[local]'"
    for name in ("torch", "transformers", "peft", "trl", "datasets", "tokenizers"):
        pytest.importorskip(name, reason=reason)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


@pytest.fixture(scope="module")
def tiny_base_model(training_libs, tmp_path_factory) -> Path:  # noqa: ANN001
    """A 2-layer Llama with random weights and a word-level tokenizer trained on our SOPs."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-base")
    corpus = [SYSTEM] + [text for pair in sop_texts() for text in pair]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.decoder = decoders.WordPiece()  # joins words with spaces
    raw.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def write_snapshot(directory: Path) -> tuple[Path, Path]:
    """train.jsonl / validation.jsonl in the snapshot format (dataset.chat_example)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(chat_example(prompt, text, SYSTEM)) for prompt, text in sop_texts()]
    train, validation = directory / "train.jsonl", directory / "validation.jsonl"
    train.write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    validation.write_text("\n".join(lines[-2:]) + "\n", encoding="utf-8")
    return train, validation


@pytest.fixture
def make_backend(database_url: str, tmp_path: Path):  # noqa: ANN201
    """Backends on a real service container; several instances model a bot restart."""
    built = []

    def make(runner: str = "thread", **overrides: object) -> LoraBackend:
        values = {"training_backend": "local", "local_model_dir": tmp_path / "models",
                  "local_max_steps": 4, "local_lora_rank": 4, **overrides}
        services = build_services(make_settings(database_url, tmp_path / "data", **values))
        built.append(services)
        return LoraBackend(services, runner=runner)

    yield make
    for services in built:
        services.engine.dispose()


def spec_for(backend: LoraBackend, tmp_path: Path, snapshot_hash: str = "snap-1") -> JobSpec:
    train, validation = write_snapshot(tmp_path / "snapshot")
    train_file, validation_file = backend.upload(train), backend.upload(validation)
    assert train_file.status == validation_file.status == "processed"
    return JobSpec(
        base_model="gpt-4o-mini-2024-07-18", training_file_id=train_file.id,
        validation_file_id=validation_file.id,
        hyperparameters={"n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": 5},
        suffix="sop-bot", seed=1, metadata={"snapshot_hash": snapshot_hash, "run_id": "7"})


# --- training for real -------------------------------------------------------------------------


def test_tiny_lora_run_writes_an_adapter_that_loads_and_generates(
    tiny_base_model: Path, make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("thread", local_base_model=str(tiny_base_model))
    started = backend.start_job(spec_for(backend, tmp_path))
    assert started.state in ("queued", "running")

    finished = backend.wait(started.id, timeout=WAIT_SECONDS)

    assert finished.state == "succeeded", finished.error_message
    assert finished.fine_tuned_model == f"sop-bot-{started.id}"
    adapter = backend.adapter_path(started.id)
    assert adapter == tmp_path / "models" / started.id / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()

    metrics = [e for e in backend.events(started.id) if e.kind == "metrics"]
    train_losses = [e for e in metrics if e.train_loss is not None]
    valid_losses = [e for e in metrics if e.valid_loss is not None]
    assert [e.step for e in train_losses] == [1, 2, 3, 4]
    assert all(e.train_loss > 0 for e in train_losses)
    assert valid_losses and all(e.valid_loss > 0 for e in valid_losses)
    assert backend.checkpoints(started.id)[0]["step_number"] == 4

    _assert_adapter_generates(tiny_base_model, adapter)


def _assert_adapter_generates(base: Path, adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    inputs = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Write an SOP"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = output[0][inputs["input_ids"].shape[1]:]
    assert len(new_tokens) > 0
    assert isinstance(tokenizer.decode(new_tokens), str)


@pytest.mark.slow
def test_training_in_a_subprocess_survives_a_backend_restart(
    tiny_base_model: Path, make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("subprocess", local_base_model=str(tiny_base_model))
    started = backend.start_job(spec_for(backend, tmp_path, snapshot_hash="snap-sub"))
    assert read_json(tmp_path / "models" / started.id / "status.json")["pid"] != os.getpid()
    assert backend.wait(started.id, timeout=WAIT_SECONDS).state == "succeeded", (
        (tmp_path / "models" / started.id / "train.log").read_text())

    restarted = make_backend("subprocess", local_base_model=str(tiny_base_model))

    found = restarted.find_job("snap-sub")
    assert found is not None and found.id == started.id
    assert found.state == "succeeded"
    assert found.fine_tuned_model == f"sop-bot-{started.id}"
    assert found.metadata == {"snapshot_hash": "snap-sub", "run_id": "7"}
    events = restarted.events(started.id)
    assert any(e.kind == "metrics" and e.train_loss for e in events)
    later = restarted.events(started.id, after=events[1].id)
    assert [e.id for e in later] == [e.id for e in events[2:]]
    assert restarted.find_job("snap-unknown") is None


def test_cancel_stops_training_and_keeps_no_adapter(
    tiny_base_model: Path, make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("thread", local_base_model=str(tiny_base_model),
                           local_max_steps=200)
    started = backend.start_job(spec_for(backend, tmp_path))

    assert backend.cancel(started.id).state == "cancelled"
    final = backend.wait(started.id, timeout=WAIT_SECONDS)

    assert final.state == "cancelled"
    assert not backend.adapter_path(started.id).exists()
    steps = [e.step for e in backend.events(started.id) if e.kind == "metrics"]
    assert max(steps, default=0) < 200


def test_a_failing_base_model_ends_the_job_failed_with_the_reason(
    training_libs, make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("thread", local_base_model=str(tmp_path / "no-such-model"))
    started = backend.start_job(spec_for(backend, tmp_path))

    final = backend.wait(started.id, timeout=WAIT_SECONDS)

    assert final.state == "failed"
    assert final.error_code == "local_training_error"
    assert "no-such-model" in final.error_message
    assert any(e.level == "error" for e in backend.events(started.id))


# --- job bookkeeping without training --------------------------------------------------------


def test_a_job_whose_process_died_is_reported_failed_after_a_restart(
    make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("subprocess")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    job_dir = tmp_path / "models" / "lora-3-deadbeef"
    update_status(job_dir, id="lora-3-deadbeef", state="running", runner="subprocess",
                  pid=dead.pid, metadata={"snapshot_hash": "snap-dead", "run_id": "3"},
                  created_at=1)

    status = backend.find_job("snap-dead")

    assert status is not None and status.state == "failed"
    assert status.error_code == "interrupted"
    assert "start a new run" in status.error_message
    assert read_json(job_dir / "status.json")["state"] == "failed"  # persisted


def test_upload_registers_the_path_and_rejects_files_that_are_not_chat_examples(
    make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend()
    train, _ = write_snapshot(tmp_path / "snapshot")
    good = backend.upload(train)
    assert good.id.startswith("file-local-") and good.status == "processed"
    assert backend.upload(train).id == good.id  # same path, same id
    assert backend.file_status(good.id).status == "processed"

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    bad = backend.upload(broken)
    assert bad.status == "error"
    assert "no assistant message" in bad.error

    train.unlink()
    gone = backend.file_status(good.id)
    assert gone.status == "error" and "sop-bot datasets snapshot" in gone.error
    with pytest.raises(BackendError, match="does not exist"):
        backend.upload(tmp_path / "missing.jsonl")


def test_start_job_without_a_local_base_model_says_what_to_set(
    make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend(local_base_model=None)
    spec = spec_for(backend, tmp_path)
    with pytest.raises(BackendError, match="LOCAL_BASE_MODEL") as caught:
        backend.start_job(spec)
    assert caught.value.code == "local_base_model_missing"  # with or without the [local] extra
    assert not any(p.name.startswith("lora-") for p in (tmp_path / "models").iterdir())


def test_start_job_without_the_local_packages_says_what_to_install(
    make_backend, tmp_path: Path, monkeypatch,  # noqa: ANN001
) -> None:
    from sop_pipeline.training import lora_backend

    monkeypatch.setattr(lora_backend, "missing_dependencies", lambda: ["torch", "peft"])
    backend = make_backend(local_base_model="Qwen/Qwen2.5-1.5B-Instruct")
    with pytest.raises(BackendError, match=r"\.\[local\]") as caught:
        backend.start_job(spec_for(backend, tmp_path))
    assert caught.value.code == "local_dependencies_missing"
    assert "torch, peft" in str(caught.value)
    assert not any(p.name.startswith("lora-") for p in (tmp_path / "models").iterdir())


def test_unknown_job_ids_are_clear_errors(make_backend) -> None:  # noqa: ANN001
    backend = make_backend()
    with pytest.raises(BackendError, match="no local training job"):
        backend.job_status("lora-1-nothere")
    with pytest.raises(BackendError):
        backend.job_status("../etc")


def test_steps_follow_local_max_steps_or_the_requested_epochs() -> None:
    plan = {"max_steps": 200, "n_epochs": "auto", "batch_size": "auto"}
    assert plan_steps(plan, 10) == (4, 200)
    assert plan_steps({**plan, "n_epochs": 3}, 10) == (4, 9)
    assert plan_steps({**plan, "n_epochs": 1000, "batch_size": 2}, 10) == (2, 200)
    assert plan_steps({**plan, "batch_size": 64}, 3) == (3, 200)


def test_examples_become_prompt_completion_pairs(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    write_json_atomic(tmp_path / "x.json", {})  # the helper creates parents atomically
    path.write_text(json.dumps(chat_example("Write an SOP for X", "X SOP", SYSTEM)) + "\n\n")
    [row] = load_examples(path)
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["completion"] == [{"role": "assistant", "content": "X SOP"}]


class FakeVllm(BaseHTTPRequestHandler):
    """vLLM's runtime adapter endpoint: loads once, then says it is already loaded."""

    loaded: dict[str, str] = {}
    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path != "/v1/load_lora_adapter":
            self.send_response(404)
            payload = b"not found"
        elif body["lora_name"] in self.loaded:
            self.send_response(400)
            payload = f"The lora adapter '{body['lora_name']}' has already been loaded.".encode()
        else:
            self.loaded[body["lora_name"]] = body["lora_path"]
            self.send_response(200)
            payload = b"Success"
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_a_new_adapter_is_loaded_into_the_vllm_server(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        settings = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data",
                                 openai_base_url=base)
        adapter = tmp_path / "models" / "lora-1-abc" / "adapter"

        assert load_adapter_into_server(settings, "sop-bot-lora-1-abc", adapter) is True
        assert load_adapter_into_server(settings, "sop-bot-lora-1-abc", adapter) is True
        assert FakeVllm.loaded == {"sop-bot-lora-1-abc": str(adapter)}
        assert FakeVllm.seen[0] == ("/v1/load_lora_adapter", "Bearer sk-test-key")

        elsewhere = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data",
                                  openai_base_url=base.removesuffix("/v1"))
        assert load_adapter_into_server(elsewhere, "x", adapter) is False  # 404: no runtime LoRA
    finally:
        server.shutdown()
        server.server_close()
    closed = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data",
                           openai_base_url=base, openai_timeout_seconds=1)
    assert load_adapter_into_server(closed, "x", adapter) is False  # nothing listening


# --- issue 17: sequence length, devices, Ollama, vLLM's view of the adapter ------------------


def test_examples_longer_than_the_sequence_length_are_reported_by_count_before_training(
    tiny_base_model: Path, make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("thread", local_base_model=str(tiny_base_model),
                           local_max_seq_tokens=128, local_max_steps=2,
                           local_server="ollama", local_ollama_base="/srv/base")
    started = backend.start_job(spec_for(backend, tmp_path))
    final = backend.wait(started.id, timeout=WAIT_SECONDS)
    assert final.state == "succeeded", final.error_message

    events = backend.events(started.id)
    warnings = [e for e in events if e.level == "warning"]
    assert len(warnings) == 1
    assert "training example(s) are longer than LOCAL_MAX_SEQ_TOKENS (128 tokens" in (
        warnings[0].message)
    assert "first 128 tokens only" in warnings[0].message
    started_at = next(i for i, e in enumerate(events) if e.message.startswith("Training started"))
    assert events.index(warnings[0]) < started_at  # reported before training starts
    modelfile = tmp_path / "models" / started.id / "Modelfile"
    assert modelfile.read_text() == "FROM /srv/base\nADAPTER ./adapter\n"


def test_long_examples_refuse_the_run_when_set_to(
    tiny_base_model: Path, make_backend, tmp_path: Path,  # noqa: ANN001
) -> None:
    backend = make_backend("thread", local_base_model=str(tiny_base_model),
                           local_max_seq_tokens=128, local_long_examples="refuse")
    started = backend.start_job(spec_for(backend, tmp_path))
    final = backend.wait(started.id, timeout=WAIT_SECONDS)

    assert final.state == "failed"
    assert "LOCAL_LONG_EXAMPLES=refuse" in final.error_message
    assert "Raise LOCAL_MAX_SEQ_TOKENS" in final.error_message
    assert not backend.adapter_path(started.id).exists()


def test_precision_follows_the_hardware() -> None:
    from sop_pipeline.training.lora_train import choose_device

    assert choose_device(cuda=True, bf16=True, mps=False) == ("cuda", {"bf16": True})
    assert choose_device(cuda=True, bf16=False, mps=False) == ("cuda", {"fp16": True})
    assert choose_device(cuda=False, bf16=False, mps=True) == ("mps", {})
    assert choose_device(cuda=False, bf16=False, mps=False) == ("cpu", {})


def test_ollama_families_and_the_cpu_size_limit_are_refused_with_a_sentence(
    training_libs,  # noqa: ANN001
) -> None:
    from transformers import LlamaConfig, Qwen2Config

    from sop_pipeline.training.lora_train import check_model_fits

    small = {"base_model": "Qwen/Qwen2.5-1.5B-Instruct", "server": "ollama"}
    with pytest.raises(ValueError, match="Ollama cannot load a LoRA adapter for a qwen2 base"):
        check_model_fits(small, Qwen2Config(), "cuda")
    check_model_fits({**small, "server": "vllm"}, Qwen2Config(), "cuda")  # vLLM takes it
    llama = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512,
                        num_hidden_layers=2, num_attention_heads=4)
    check_model_fits({**small, "cpu_max_params_m": 100}, llama, "cpu")  # ~18M: fine on CPU
    with pytest.raises(ValueError, match="No GPU was found and .* more than "
                                         "LOCAL_CPU_MAX_PARAMS_M \\(1M\\)"):
        check_model_fits({**small, "cpu_max_params_m": 1}, llama, "cpu")
    check_model_fits({**small, "cpu_max_params_m": 1}, llama, "cuda")


def test_vllm_is_sent_the_adapter_path_it_sees_on_the_shared_volume(tmp_path: Path) -> None:
    from sop_pipeline.training.lora_backend import server_adapter_path

    settings = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data",
                             local_model_dir=tmp_path / "models",
                             local_server_adapter_dir="/adapters")
    adapter = tmp_path / "models" / "lora-1-abc" / "adapter"
    assert server_adapter_path(settings, adapter) == "/adapters/lora-1-abc/adapter"
    same = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data",
                         local_model_dir=tmp_path / "models")
    assert server_adapter_path(same, adapter) == str(adapter)

    FakeVllm.loaded.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        shared = make_settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "data",
                               openai_base_url=base, local_model_dir=tmp_path / "models",
                               local_server_adapter_dir="/adapters")
        assert load_adapter_into_server(shared, "sop-bot-lora-1-abc", adapter) is True
        assert FakeVllm.loaded == {"sop-bot-lora-1-abc": "/adapters/lora-1-abc/adapter"}
    finally:
        FakeVllm.loaded.clear()
        FakeVllm.seen.clear()
        server.shutdown()
        server.server_close()


def test_the_compose_file_shares_the_adapter_volume_the_settings_describe() -> None:
    import yaml

    from sop_pipeline.settings import Settings

    root = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((root / "deploy" / "docker-compose.vllm.yml").read_text())
    bot, vllm = compose["services"]["bot"], compose["services"]["vllm"]
    env = bot["environment"]
    assert set(k.lower() for k in env) <= set(Settings.model_fields)
    mounts = {v.split(":")[0]: v.split(":")[1] for v in bot["volumes"]}
    served = {v.split(":")[0]: v.split(":")[1] for v in vllm["volumes"]}
    assert mounts["adapters"] == env["LOCAL_MODEL_DIR"]
    assert served["adapters"] == env["LOCAL_SERVER_ADAPTER_DIR"]
    assert "adapters" in compose["volumes"]
    assert "--enable-lora" in vllm["command"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    model = vllm["command"][vllm["command"].index("--model") + 1]
    assert env["LOCAL_BASE_MODEL"] == env["SOP_BASE_MODEL"] == model
    assert env["OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    dockerfile = (root / bot["build"]["dockerfile"]).read_text()
    assert "'.[local]'" in dockerfile
