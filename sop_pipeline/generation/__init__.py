"""SOP generation: short prompts for the fine-tuned model, retrieval before the first
fine-tune, compliance check and one repair round, streaming, and .docx export.

The Slack layer and the CLI use exactly these names.
"""

from __future__ import annotations

from sop_pipeline.generation.generate import (
    MODE_FINE_TUNED,
    MODE_RETRIEVAL,
    generate,
    run_generation,
)
from sop_pipeline.generation.messages import RequestRejected, draft_notice, validate_request
from sop_pipeline.generation.store import (
    GenerationResult,
    ReplyAt,
    RequestReplayed,
    fail_before_running,
    find_generation_by_message,
    start_generation,
)

__all__ = [
    "MODE_FINE_TUNED",
    "MODE_RETRIEVAL",
    "GenerationResult",
    "ReplyAt",
    "RequestRejected",
    "RequestReplayed",
    "draft_notice",
    "fail_before_running",
    "find_generation_by_message",
    "generate",
    "run_generation",
    "start_generation",
    "to_docx",
    "validate_request",
]


def to_docx(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - lazy: python-docx is slow to import
    """See `sop_pipeline.generation.docx_export.to_docx`."""
    from sop_pipeline.generation.docx_export import to_docx as _to_docx

    return _to_docx(*args, **kwargs)
