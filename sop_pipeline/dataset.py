"""Training data as the fine-tuning API expects it: chat-format JSONL, checked before upload.

`check_dataset` mirrors OpenAI's cookbook data-preparation notebook (same error keys, same
epoch rule, same billing estimate) and adds what bites in practice: lines that are not JSON,
examples over the token limit, duplicates, and too few examples. It reports and keeps going,
so one bad line never hides the next. Snapshots of these files are in `snapshots`.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from sop_pipeline.models import TrainingExample
from sop_pipeline.settings import Settings
from sop_pipeline.tokens import count_assistant_tokens, count_chat_tokens

# The cookbook's format error keys, in the order the notebook checks them.
FORMAT_ERROR_KEYS = (
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
)
ERROR_KEYS = FORMAT_ERROR_KEYS + (
    "invalid_json",
    "over_token_limit",
    "too_few_examples",
    "duplicate_example",
)
ERROR_MESSAGES = {
    "data_type": "the line is JSON but not an object",
    "missing_messages_list": "the example has no non-empty \"messages\" list",
    "message_missing_key": "a message lacks \"role\" or \"content\"",
    "message_unrecognized_key": "a message has a key other than role, content, name, "
    "function_call or weight",
    "unrecognized_role": "a message role is not system, user, assistant or function",
    "missing_content": "a message has empty or non-text content",
    "example_missing_assistant_message": "the example has no assistant message",
    "invalid_json": "the line is not valid JSON",
    "over_token_limit": "the example is longer than the per-example token limit",
    "too_few_examples": "the file has fewer examples than the minimum",
    "duplicate_example": "the example repeats an earlier line",
}
ALLOWED_MESSAGE_KEYS = ("role", "content", "name", "function_call", "weight")
ALLOWED_ROLES = ("system", "user", "assistant", "function")

# Cookbook epoch rule and billing cap.
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
MAX_BILLED_TOKENS_PER_EXAMPLE = 65536

OPENAI_MIN_TRAIN_EXAMPLES = 10  # the fine-tuning API refuses smaller training files
MIN_EXAMPLES_FOR_VALIDATION = 20  # below this every example is worth more in training
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"

T = TypeVar("T")


class DatasetError(Exception):
    """The dataset cannot be used; the text says what to do about it."""


# --- building lines ----------------------------------------------------------------------


def chat_example(prompt: str, sop_text: str, system_prompt: str) -> dict:
    """One training example in the chat format the fine-tuning API expects."""
    return {
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": sop_text},
        ]
    }


def jsonl_text(examples: Iterable[TrainingExample], system_prompt: str) -> str:
    """JSONL for the examples; stable bytes for the same input (used for the snapshot hash)."""
    lines = [
        json.dumps(chat_example(ex.prompt, ex.sop_text, system_prompt), ensure_ascii=False)
        for ex in examples
    ]
    return "".join(line + "\n" for line in lines)


# --- checking ----------------------------------------------------------------------------


@dataclass
class Distribution:
    """min/max/mean/median/p90 of a list of token counts (all 0 for an empty list)."""

    min: int = 0
    max: int = 0
    mean: float = 0.0
    median: float = 0.0
    p90: float = 0.0

    @classmethod
    def of(cls, values: Sequence[int]) -> Distribution:
        if not values:
            return cls()
        ordered = sorted(values)
        p90_index = min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))
        return cls(
            min=ordered[0],
            max=ordered[-1],
            mean=round(statistics.fmean(ordered), 1),
            median=float(statistics.median(ordered)),
            p90=float(ordered[p90_index]),
        )


@dataclass
class DatasetReport:
    """What `check_dataset` found; `ok` when there are no errors (warnings are allowed)."""

    n_lines: int = 0
    n_examples: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_lines: dict[str, list[int]] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    total_tokens: Distribution = field(default_factory=Distribution)
    assistant_tokens: Distribution = field(default_factory=Distribution)
    token_limit: int = 0
    n_over_limit: int = 0
    dataset_tokens: int = 0
    epochs: int = 0
    billed_tokens: int = 0
    estimated_cost_usd: float = 0.0
    min_examples: int = 0

    @property
    def ok(self) -> bool:
        return not any(self.errors.values())

    def add_error(self, key: str, line: int | None) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if line is not None:
            lines = self.error_lines.setdefault(key, [])
            if line not in lines:
                lines.append(line)

    def to_dict(self) -> dict:
        """Plain data for `--json` and for storing next to a run."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def error_sentences(self) -> list[str]:
        """One readable sentence per error key, naming the first few line numbers."""
        sentences = []
        for key in ERROR_KEYS:
            count = self.errors.get(key, 0)
            if not count:
                continue
            lines = self.error_lines.get(key, [])
            where = ""
            if lines:
                shown = ", ".join(str(n) for n in lines[:10])
                more = f" and {len(lines) - 10} more" if len(lines) > 10 else ""
                where = f" (line{'s' if len(lines) > 1 else ''} {shown}{more})"
            if key == "too_few_examples":
                text = (
                    f"{key}: the file has {self.n_examples} example(s) but at least "
                    f"{self.min_examples} are needed; approve or add more SOPs first."
                )
            elif key == "over_token_limit":
                text = (
                    f"{key}: {count} example(s) exceed {self.token_limit:,} tokens{where}; "
                    "shorten or split those SOPs."
                )
            else:
                text = f"{key}: {count} time(s), {ERROR_MESSAGES[key]}{where}."
            sentences.append(text)
        return sentences

    def summary(self) -> str:
        """A short human summary of the size and cost."""
        return (
            f"{self.n_examples} examples, {self.dataset_tokens:,} tokens, about {self.epochs} "
            f"epoch{'s' if self.epochs != 1 else ''}, {self.billed_tokens:,} billed tokens, "
            f"estimated cost ${self.estimated_cost_usd:,.2f}"
        )


def estimate_epochs(n_examples: int, settings: Settings) -> int:
    """Epochs the API will run: the configured number, or the cookbook's default rule."""
    configured = str(settings.fine_tune_epochs).strip().lower()
    if configured != "auto":
        return max(1, int(round(float(configured))))
    if n_examples <= 0:
        return 0
    epochs = TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def _read_lines(lines_or_path: Path | str | Iterable[str | dict]) -> list[str | dict]:
    if isinstance(lines_or_path, (str, os.PathLike)):
        path = Path(lines_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DatasetError(
                f"{path} is not UTF-8 text; export it again as UTF-8 JSONL."
            ) from None
        return list(text.splitlines())
    return list(lines_or_path)


def _check_messages(messages: list, line: int, report: DatasetReport) -> None:
    """The cookbook's per-message checks; counts every occurrence like the notebook does."""
    for message in messages:
        if not isinstance(message, dict):
            report.add_error("data_type", line)
            continue
        if "role" not in message or "content" not in message:
            report.add_error("message_missing_key", line)
        if any(key not in ALLOWED_MESSAGE_KEYS for key in message):
            report.add_error("message_unrecognized_key", line)
        if message.get("role") not in ALLOWED_ROLES:
            report.add_error("unrecognized_role", line)
        content = message.get("content")
        function_call = message.get("function_call")
        if (not content and not function_call) or not isinstance(content, str):
            report.add_error("missing_content", line)
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        report.add_error("example_missing_assistant_message", line)


def check_dataset(
    lines_or_path: Path | str | Iterable[str | dict],
    settings: Settings,
    *,
    min_examples: int | None = None,
) -> DatasetReport:
    """Check a chat-format JSONL file (a path) or its lines; never raises on bad content.

    Blank lines are skipped with a warning. `min_examples` defaults to
    `settings.sop_min_examples`.
    """
    limit = settings.sop_max_example_tokens
    report = DatasetReport(
        token_limit=limit,
        min_examples=settings.sop_min_examples if min_examples is None else min_examples,
    )
    seen: dict[str, int] = {}
    totals: list[int] = []
    assistant: list[int] = []
    for number, raw in enumerate(_read_lines(lines_or_path), start=1):
        report.n_lines += 1
        if isinstance(raw, str):
            if not raw.strip():
                report.warnings["blank_line"] = report.warnings.get("blank_line", 0) + 1
                continue
            try:
                example = json.loads(raw)
            except json.JSONDecodeError:
                report.add_error("invalid_json", number)
                continue
        else:
            example = raw
        report.n_examples += 1
        if not isinstance(example, dict):
            report.add_error("data_type", number)
            continue
        messages = example.get("messages")
        if not messages or not isinstance(messages, list):
            report.add_error("missing_messages_list", number)
            continue
        _check_messages(messages, number, report)
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key in seen:
            report.add_error("duplicate_example", number)
        else:
            seen[key] = number
        dict_messages = [m for m in messages if isinstance(m, dict)]
        _note_missing_roles(dict_messages, report)
        total = count_chat_tokens(dict_messages)
        totals.append(total)
        assistant.append(count_assistant_tokens(dict_messages))
        if total > limit:
            report.add_error("over_token_limit", number)
    if report.n_examples < report.min_examples:
        report.add_error("too_few_examples", None)
    _add_token_estimates(report, totals, assistant, settings)
    return report


def _note_missing_roles(messages: list[dict], report: DatasetReport) -> None:
    roles = {m.get("role") for m in messages}
    for role in ("system", "user"):
        if role not in roles:
            key = f"missing_{role}_message"
            report.warnings[key] = report.warnings.get(key, 0) + 1


def _add_token_estimates(
    report: DatasetReport, totals: list[int], assistant: list[int], settings: Settings
) -> None:
    report.total_tokens = Distribution.of(totals)
    report.assistant_tokens = Distribution.of(assistant)
    report.n_over_limit = sum(1 for t in totals if t > report.token_limit)
    report.dataset_tokens = sum(totals)
    report.epochs = estimate_epochs(len(totals), settings)
    billed_once = sum(min(MAX_BILLED_TOKENS_PER_EXAMPLE, t) for t in totals)
    report.billed_tokens = billed_once * report.epochs
    report.estimated_cost_usd = round(
        report.billed_tokens / 1e6 * settings.training_price_per_1m_tokens, 4
    )


# --- splitting -----------------------------------------------------------------------------


def _rank(seed: int, example: TrainingExample) -> str:
    return hashlib.sha256(f"{seed}:{example.content_hash}".encode()).hexdigest()


def validation_size(n_examples: int, settings: Settings) -> int:
    """How many examples go to validation: none below 20 examples, else at least one."""
    if n_examples < MIN_EXAMPLES_FOR_VALIDATION or settings.validation_share <= 0:
        return 0
    return max(1, round(n_examples * settings.validation_share))


def split_examples(
    examples: Sequence[TrainingExample], settings: Settings
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Deterministic train/validation split, seeded by `split_seed` and each SOP's hash.

    Order within each part follows the input order, so files are stable for the same input.
    """
    n_validation = validation_size(len(examples), settings)
    if not n_validation:
        return list(examples), []
    ranked = sorted(examples, key=lambda ex: _rank(settings.split_seed, ex))
    chosen = {id(ex) for ex in ranked[:n_validation]}
    train = [ex for ex in examples if id(ex) not in chosen]
    validation = [ex for ex in examples if id(ex) in chosen]
    return train, validation
