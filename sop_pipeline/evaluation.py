"""Evaluation gate (placeholder until the gate lands): every succeeded run is promoted."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    scores: dict = field(default_factory=dict)
    report: str = ""


def gate(services, run, candidate_model_id: str) -> GateDecision:  # noqa: ANN001
    """Decide whether the candidate may replace the active model."""
    return GateDecision(promote=True, report="No evaluation gate configured yet.")
