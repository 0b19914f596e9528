"""Scoring drafts: one draft against the template and its approved reference, and a model's
scores over all evaluation cases.

* compliance   share of drafts that pass the house-format check (`sop_format.validate`),
* coverage     share of the template's required sections present and not blank,
* similarity   ROUGE-L F1 between draft and approved reference, section by section,
* length       closeness of the draft's length to the reference's (1.0 = same length).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from sop_pipeline.evaluation.cases import EvalCase

Mode = Literal["fine_tuned", "retrieval"]
MODE_FINE_TUNED: Mode = "fine_tuned"
MODE_RETRIEVAL: Mode = "retrieval"

# How much each metric weighs in the aggregate; compliance matters most in a regulated plant.
WEIGHTS = {"compliance": 0.4, "coverage": 0.2, "similarity": 0.3, "length": 0.1}
MAX_LCS_WORDS = 800  # per section; bounds the O(n*m) LCS on very long sections
METRIC_LABELS = (
    ("compliance", "Format compliance"),
    ("coverage", "Section coverage"),
    ("similarity", "ROUGE-L vs reference"),
    ("length", "Length closeness"),
    ("aggregate", "Aggregate score"),
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class CaseScore:
    """Scores of one draft. `similarity`/`length` are None without a reference."""

    source: str
    compliant: bool
    coverage: float
    similarity: float | None
    length: float | None
    error: str | None = None
    errors: int = 0  # format errors found


@dataclass
class ModelScores:
    """One model's scores over all cases, with the per-case details."""

    model_id: str
    mode: Mode
    cases: list[CaseScore] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.cases)

    def _mean(self, values: Sequence[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    @property
    def compliance(self) -> float | None:
        return self._mean([1.0 if c.compliant else 0.0 for c in self.cases])

    @property
    def coverage(self) -> float | None:
        return self._mean([c.coverage for c in self.cases])

    @property
    def similarity(self) -> float | None:
        return self._mean([c.similarity for c in self.cases if c.similarity is not None])

    @property
    def length(self) -> float | None:
        return self._mean([c.length for c in self.cases if c.length is not None])

    @property
    def aggregate(self) -> float | None:
        """Weighted mean of the metrics that exist (no references: compliance and coverage)."""
        parts = [(WEIGHTS[name], getattr(self, name)) for name in WEIGHTS]
        present = [(w, v) for w, v in parts if v is not None]
        if not present:
            return None
        return round(sum(w * v for w, v in present) / sum(w for w, _ in present), 4)

    def to_dict(self) -> dict:
        """Plain JSON for TrainingRun.eval_scores / ModelVersion.eval_scores."""
        return {
            "model": self.model_id, "mode": self.mode, "n_cases": self.n,
            "compliance": self.compliance, "coverage": self.coverage,
            "similarity": self.similarity, "length": self.length, "aggregate": self.aggregate,
            "failed_requests": sum(1 for c in self.cases if c.error),
            "cases": [asdict(c) for c in self.cases],
        }


# --- text metrics --------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased word tokens (what ROUGE compares)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(a)*len(b)) time and O(len(b))
    memory."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts on word tokens (1.0 for identical, 0.0 for nothing shared)."""
    cand, ref = words(candidate)[:MAX_LCS_WORDS], words(reference)[:MAX_LCS_WORDS]
    if not cand and not ref:
        return 1.0
    lcs = lcs_length(cand, ref)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def length_closeness(draft_tokens: int, reference_tokens: int) -> float:
    """min(r, 1/r) for r = draft/reference: 1.0 for equal length, 0.5 for half or double."""
    if draft_tokens <= 0 or reference_tokens <= 0:
        return 1.0 if draft_tokens == reference_tokens else 0.0
    ratio = draft_tokens / reference_tokens
    return min(ratio, 1 / ratio)


def _section_texts(sop, template) -> dict[str, str]:  # noqa: ANN001 - SOP, Template
    """Template key -> the section's text (body and items), plus the title."""
    texts = {"title": sop.title or ""}
    for section in sop.sections:
        if section.key is None or section.key in texts:
            continue
        items = "\n".join(item.text for item in section.items)
        texts[section.key] = f"{section.body}\n{items}".strip()
    return texts


def score_draft(
    draft: str, reference: str | None, template, *, source: str = "",  # noqa: ANN001
    count_tokens: Callable[[str], int] | None = None,
) -> CaseScore:
    """Score one draft against the template and (when given) the approved reference."""
    from sop_pipeline import sop_format

    sop = sop_format.parse(draft, template)
    findings = sop_format.validate(sop, template)
    required = [spec.key for spec in template.sections if spec.required]
    present = [key for key in required
               if (section := sop.section(key)) is not None and not section.is_blank()]
    coverage = len(present) / len(required) if required else 1.0
    similarity = length = None
    if reference is not None:
        ref_sop = sop_format.parse(reference, template)
        ref_texts, draft_texts = _section_texts(ref_sop, template), _section_texts(sop, template)
        keys = [key for key, text in ref_texts.items() if text.strip()]
        if keys:
            similarity = sum(rouge_l_f1(draft_texts.get(k, ""), ref_texts[k])
                             for k in keys) / len(keys)
        else:
            similarity = rouge_l_f1(draft, reference)
        counter = count_tokens or (lambda text: len(words(text)))
        length = length_closeness(counter(draft), counter(reference))
    return CaseScore(
        source=source, compliant=sop_format.is_compliant(findings), coverage=round(coverage, 4),
        similarity=None if similarity is None else round(similarity, 4),
        length=None if length is None else round(length, 4),
        errors=sum(1 for f in findings if f.severity == "error"),
    )


def failed_case(case: EvalCase, error: str) -> CaseScore:
    """A prompt the model did not answer: the worst score on every metric."""
    has_reference = case.reference is not None
    return CaseScore(source=case.source, compliant=False, coverage=0.0,
                     similarity=0.0 if has_reference else None,
                     length=0.0 if has_reference else None, error=error)
