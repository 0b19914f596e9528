"""What people read about a draft: why a request is refused, why a draft failed (one
sentence saying what to do next), and the DRAFT notice every generated document carries."""

from __future__ import annotations

import logging
from datetime import datetime

import openai

from sop_pipeline.generation import requests
from sop_pipeline.generation.stream import StreamStalled
from sop_pipeline.providers import ProviderConfigError
from sop_pipeline.retry_policy import DeadlineExceeded
from sop_pipeline.services import DatabaseBusy
from sop_pipeline.settings import Settings

log = logging.getLogger(__name__)


class RequestRejected(ValueError):
    """The request cannot become an SOP; `str(exc)` tells the user what to type instead."""


class GenerationCancelled(Exception):
    """The caller set the cancel event (e.g. the bot is shutting down)."""


class EmptyAnswer(Exception):
    """The model streamed no text at all."""



def validate_request(request: str | None, max_chars: int) -> str:
    """The cleaned request, or `RequestRejected` with a sentence saying what to do."""
    text = requests.normalize_request(request or "")
    if not text:
        raise RequestRejected(
            f"Your request is empty. Describe the procedure, for example: "
            f"{requests.EXAMPLE_REQUEST}"
        )
    if len(text) > max_chars:
        raise RequestRejected(
            f"Your request is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Shorten it to the procedure's name and its key points, then try again."
        )
    if not requests.looks_like_sop_request(text):
        raise RequestRejected(
            "That doesn't look like a request for an SOP. "
            f"Try: {requests.EXAMPLE_REQUEST}"
        )
    return text


def error_sentence(exc: BaseException, model: str | None, settings: Settings) -> str:
    """The sentence a user sees for a failure (bugs are logged with their traceback)."""
    seconds = f"{settings.sop_generation_timeout_seconds:g}"
    later = "Please try again in a few minutes."
    if isinstance(exc, GenerationCancelled):
        return "The draft was cancelled before it was finished. Please ask again."
    if isinstance(exc, (ProviderConfigError, DatabaseBusy)):
        return str(exc)
    if isinstance(exc, EmptyAnswer):
        return "The model returned an empty answer. Please try again."
    if isinstance(exc, StreamStalled):
        return (f"The model provider stopped sending the draft for "
                f"{settings.sop_stream_idle_seconds:g} seconds, so SOP Bot gave up on it. {later}")
    if isinstance(exc, DeadlineExceeded):
        return f"The model provider did not answer within {seconds} seconds. {later}"
    if isinstance(exc, openai.AuthenticationError):
        return "SOP Bot's OpenAI key was refused; ask an admin to check OPENAI_API_KEY."
    if isinstance(exc, openai.PermissionDeniedError):
        return (f"SOP Bot's OpenAI key may not use the model {model}; ask an admin to "
                "check the key's project and model permissions.")
    if isinstance(exc, openai.RateLimitError) and exc.code == "insufficient_quota":
        return ("SOP Bot's OpenAI account has run out of credit; ask an admin to check the "
                "billing settings.")
    if isinstance(exc, openai.RateLimitError):
        return f"The model provider is rate-limiting SOP Bot right now. {later}"
    if isinstance(exc, openai.NotFoundError):
        return (f"The model {model} does not exist at the provider; ask an admin to "
                "check SOP_BASE_MODEL.")
    if isinstance(exc, openai.BadRequestError):
        if exc.code == "context_length_exceeded":
            return ("The request and its examples are too long for the model; shorten the "
                    "request or lower SOP_RETRIEVAL_TOKEN_BUDGET.")
        return f"The model provider rejected the request ({exc.message[:200]}). Please " \
               "rephrase it and try again."
    if isinstance(exc, openai.APITimeoutError):
        return f"The model provider did not answer within {seconds} seconds. {later}"
    if isinstance(exc, openai.APIConnectionError):
        return ("SOP Bot could not reach the model provider. Please try again in a few "
                "minutes; if it keeps happening, ask an admin to check OPENAI_BASE_URL.")
    if isinstance(exc, openai.APIStatusError):
        return f"The model provider had an error (HTTP {exc.status_code}). {later}"
    if isinstance(exc, openai.APIError):
        return f"The model provider had an error while answering. {later}"
    log.error("SOP generation failed unexpectedly", exc_info=exc)
    return ("SOP generation failed unexpectedly. Please try again; if it keeps happening, "
            "tell an admin (the details are in the bot's log).")


def draft_notice(model: str | None, when: datetime) -> str:
    """The marker every generated document carries; deliberately NOT part of the SOP text."""
    return (f"DRAFT generated by SOP Bot with model {model or 'unknown'} on "
            f"{when:%Y-%m-%d} — not an approved SOP.")
