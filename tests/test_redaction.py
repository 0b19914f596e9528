"""Opt-in redaction: e-mails, phone numbers and custom patterns, without eating SOP content."""

from __future__ import annotations

import pytest

from sop_pipeline.generation.redaction import make_redactor, redact
from sop_pipeline.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    "text",
    [
        "Call +44 20 7946 0958 now",
        "Call (555) 123-4567 now",
        "Call 555-123-4567 now",
        "Call 555.123.4567 now",
        "Call +1 555 123 4567 now",
    ],
)
def test_phone_numbers_are_redacted(text):
    assert redact(text, ["phone"]) == "Call [REDACTED-PHONE] now"


@pytest.mark.parametrize(
    "text",
    [
        "5.1 Set the speed to 1000-2000 rpm.",
        "Effective date 2026-11-25, review 25.11.2027.",
        "Batch 12345678 and lot 20261125.",
        "Version 1.2.3 of the SOP, 70% IPA, 121 °C for 15 minutes.",
    ],
)
def test_sop_numbers_dates_and_batches_are_left_alone(text):
    assert redact(text, ["email", "phone"]) == text


def test_emails_are_redacted():
    assert redact("Mail jane.doe+qa@acme-pharma.co.uk today.", ["email"]) == (
        "Mail [REDACTED-EMAIL] today."
    )


def test_custom_patterns_are_redacted_and_only_enabled_kinds_apply():
    redactor = make_redactor(["Plant-\\d+", "Dr\\. \\w+"])
    assert redactor("Plant-7 run by Dr. Smith, jane@x.com") == (
        "[REDACTED] run by [REDACTED], jane@x.com"
    )


def test_no_patterns_means_no_change():
    redactor = make_redactor([])
    assert not redactor.enabled
    assert redactor("jane@x.com +44 20 7946 0958") == "jane@x.com +44 20 7946 0958"


def test_messages_are_copied_not_modified():
    redactor = make_redactor(["email"])
    original = [{"role": "user", "content": "ask a@b.com"}]
    assert redactor.messages(original) == [{"role": "user", "content": "ask [REDACTED-EMAIL]"}]
    assert original[0]["content"] == "ask a@b.com"


def test_invalid_custom_pattern_is_refused_at_start_up_with_a_sentence():
    with pytest.raises(SettingsError) as info:
        load_settings(env_file=None, sop_redact_patterns="email,([unclosed")
    assert "SOP_REDACT_PATTERNS" in str(info.value)
