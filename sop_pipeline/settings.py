"""SOP Bot settings: one pydantic-settings object, built once at start-up and passed in.

Every field here is documented in `.env.example` (a test keeps the two in step). Values come
from the environment first, then from `.env`. A wrong value stops start-up with a sentence that
names the variable, because a half-configured bot in a regulated plant is worse than none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
AutoOrNumber = str  # "auto" or a number; checked by _auto_or_number


class SettingsError(ValueError):
    """A configuration problem, phrased for the person who runs the bot."""


def _split_list(value: object) -> object:
    """Accept "a, b,c" (what people write in .env), a JSON list (for items that contain
    commas, such as a regex like `\\d{3,4}`) and real lists."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("looks like a JSON list but is not valid JSON") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All configuration of SOP Bot. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- core -------------------------------------------------------------------------
    database_url: str = "sqlite:///sop_bot.db"
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- model provider (OpenAI or any OpenAI-compatible endpoint) ---------------------
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_timeout_seconds: float = Field(60.0, gt=0)
    provider_max_retries: int = Field(5, ge=0, le=20)
    sop_base_model: str = "gpt-4o-mini-2024-07-18"
    sop_system_prompt: str = (
        "You are a Quality analyst who writes Standard Operating Procedures (SOPs)."
    )
    sop_template: Path | None = None

    # --- generation ------------------------------------------------------------------
    sop_max_request_chars: int = Field(2000, ge=20)
    sop_generation_timeout_seconds: float = Field(120.0, gt=0)
    sop_repair_rounds: int = Field(1, ge=0, le=3)
    sop_max_output_tokens: int = Field(2500, ge=100)
    sop_temperature: float = Field(0.2, ge=0, le=2)
    sop_retrieval_k: int = Field(3, ge=0, le=20)
    sop_retrieval_token_budget: int = Field(6000, ge=0)
    sop_redact_patterns: CommaList = Field(default_factory=list)

    # --- dataset ---------------------------------------------------------------------
    sop_max_example_tokens: int = Field(65536, ge=256)
    sop_min_examples: int = Field(10, ge=1)
    validation_share: float = Field(0.1, ge=0, lt=0.5)
    split_seed: int = 42
    training_price_per_1m_tokens: float = Field(3.0, ge=0)

    # --- fine-tuning -------------------------------------------------------------------
    training_backend: Literal["openai", "azure", "local", "none"] = "openai"
    fine_tune_epochs: AutoOrNumber = "auto"
    fine_tune_batch_size: AutoOrNumber = "auto"
    fine_tune_learning_rate_multiplier: AutoOrNumber = "auto"
    fine_tune_seed: int | None = 42
    fine_tune_suffix: str = "sop-bot"
    max_training_cost_usd: float = Field(25.0, ge=0)
    deprecation_warning_days: int = Field(30, ge=0)

    # --- Azure OpenAI ----------------------------------------------------------------
    azure_openai_endpoint: str | None = None
    azure_openai_api_key: SecretStr | None = None
    azure_openai_api_version: str = "2025-04-01-preview"
    azure_openai_deployment: str | None = None

    # --- open-weights LoRA backend ------------------------------------------------------
    local_base_model: str | None = None
    local_model_dir: Path = Path("data/models")
    local_lora_rank: int = Field(8, ge=1)
    local_max_steps: int = Field(200, ge=1)

    # --- retraining schedule -------------------------------------------------------------
    scheduler_enabled: bool = True
    retrain_check_minutes: int = Field(60, ge=1)
    retrain_min_new_examples: int = Field(10, ge=1)
    training_poll_seconds: int = Field(60, ge=5)
    scheduler_lease_seconds: int = Field(120, ge=10)

    # --- evaluation gate ---------------------------------------------------------------
    eval_share: float = Field(0.1, ge=0, lt=0.5)
    eval_seed: int = 7
    eval_tolerance: float = Field(0.02, ge=0, le=1)
    eval_prompts_file: Path | None = None
    eval_max_prompts: int = Field(10, ge=1)

    # --- Slack -------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    host: str = "0.0.0.0"  # noqa: S104 - platforms (Heroku) route to all interfaces
    port: int = Field(3000, ge=1, le=65535)
    sop_approvers: CommaList = Field(default_factory=list)
    sop_admins: CommaList = Field(default_factory=list)
    sop_approval_emoji: CommaList = Field(default_factory=lambda: ["white_check_mark"])
    sop_watched_channels: CommaList = Field(default_factory=list)
    sop_admin_channel: str | None = None
    slack_update_interval_seconds: float = Field(1.0, ge=0)

    # --- serving: worker pool, shutdown, probes, Socket Mode health ----------------------
    bot_worker_threads: int = Field(64, ge=1, le=1024)
    bot_quick_threads: int = Field(16, ge=1, le=256)
    shutdown_grace_seconds: float = Field(25.0, ge=0)
    probe_port: int | None = Field(None, ge=1, le=65535)
    socket_mode_ping_interval_seconds: float = Field(2.0, gt=0, le=60)
    # A draft whose stream sends no text for this long is given up (SSE comments don't count)
    sop_stream_idle_seconds: float = Field(30.0, gt=0)

    # --- hostile input: outbound allowlist, quiet approvals -------------------------------
    # A remote file (its url_private is off Slack): "refuse" with a sentence, or "fetch" it
    # without credentials. The bot token only ever goes to Slack's own file hosts.
    sop_remote_files: Literal["refuse", "fetch"] = "refuse"
    sop_max_file_bytes: int = Field(5_000_000, ge=1)
    # Approvals and retractions: a reaction plus an ephemeral note by default; True adds a
    # public reply in the thread as well.
    sop_approval_public_reply: bool = False

    # --- model versions: the gate's evidence rule ------------------------------------------
    eval_min_prompts: int = Field(3, ge=1)
    eval_template_prompts: bool = True

    # --- retrieval at library scale -------------------------------------------------------
    sop_embeddings_model: str | None = None
    sop_embeddings_base_url: str | None = None
    db_pool_size: int | None = Field(None, ge=1)
    db_pool_timeout_seconds: float = Field(10.0, gt=0)
    # Drafts using the database at once; the rest wait their turn (a draft holds one for a
    # transaction of milliseconds, never while the provider answers)
    db_draft_connections: int = Field(4, ge=1, le=256)

    # --- fine-tuning backends: open weights and Azure deployments --------------------------
    local_max_seq_tokens: int = Field(4096, ge=128)
    local_long_examples: Literal["truncate", "refuse"] = "truncate"
    local_base_gguf_file: str | None = None
    local_cpu_max_params_m: int = Field(1000, ge=1)
    local_server: Literal["vllm", "ollama"] = "vllm"
    local_server_adapter_dir: str | None = None
    local_ollama_base: str | None = None
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_openai_account: str | None = None
    azure_management_url: str = "https://management.azure.com"
    azure_training_type: Literal["standard", "globalstandard", "developer"] = "standard"
    azure_deployment_sku: Literal["Standard", "GlobalStandard", "DeveloperTier"] = "Standard"
    azure_deployment_capacity: int = Field(1, ge=1)
    azure_deployment_wait_seconds: int = Field(1800, ge=0)
    azure_keep_old_deployments: bool = False

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, values: object) -> object:
        """`NAME=` in .env (as .env.example writes it) means "use the default", for every
        setting: without this an empty SOP_TEMPLATE became the path "." and start-up died."""
        if not isinstance(values, dict):
            return values
        return {key: value for key, value in values.items()
                if not (isinstance(value, str) and not value.strip())}

    @field_validator("fine_tune_seed", mode="before")
    @classmethod
    def _seed(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
            return None  # the provider chooses
        return value

    @property
    def database_pool_size(self) -> int:
        """Connections per process: the drafts' share (DB_DRAFT_CONNECTIONS), one per quick
        thread (approvals, buttons, commands; a thread holds at most one at a time) and a few
        for the scheduler and start-up, so an approval never waits for a draft's."""
        return self.db_pool_size or (self.db_draft_connections + self.bot_quick_threads + 4)

    @field_validator(
        "sop_redact_patterns",
        "sop_approvers",
        "sop_admins",
        "sop_approval_emoji",
        "sop_watched_channels",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("sop_approval_emoji")
    @classmethod
    def _emoji_names(cls, value: list[str]) -> list[str]:
        return [item.strip(":") for item in value]

    @field_validator(
        "fine_tune_epochs", "fine_tune_batch_size", "fine_tune_learning_rate_multiplier"
    )
    @classmethod
    def _auto_or_number(cls, value: str) -> str:
        text = str(value).strip().lower()
        if text == "auto":
            return text
        try:
            number = float(text)
        except ValueError:
            raise ValueError("must be 'auto' or a positive number") from None
        if number <= 0:
            raise ValueError("must be 'auto' or a positive number")
        return text

    @field_validator("fine_tune_suffix")
    @classmethod
    def _suffix(cls, value: str) -> str:
        cleaned = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:40]
        return cleaned or "sop-bot"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        if value.startswith("postgres://") or value.startswith("postgresql://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("sop_redact_patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if pattern in ("email", "phone"):
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                message = f"pattern {pattern!r} is not a valid regular expression: {exc}"
                raise ValueError(message) from None
        return value

    # --- helpers -----------------------------------------------------------------------
    @property
    def snapshots_dir(self) -> Path:
        """Where dataset snapshots (portable JSONL) are written."""
        return self.data_dir / "snapshots"

    def secret(self, name: str) -> str | None:
        """Plain value of a secret setting, or None; keeps SecretStr out of call sites."""
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None


def _describe(error: ErrorDetails) -> str:
    name = str(error["loc"][0]).upper() if error.get("loc") else "a setting"
    given = error.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {str(given)[:60]!r})"
    reason = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return f"{name} is not valid{shown}: {reason}. Fix it in the environment or in .env."


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build the one Settings object, turning validation errors into readable sentences."""
    try:
        # _env_file is BaseSettings' own init argument, which pydantic's field-based signature hides
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(" ".join(_describe(e) for e in exc.errors())) from None
