"""The evaluation gate: a newly fine-tuned model replaces the active one only if it is no worse.

A fine-tune can go wrong quietly (a bad batch of approvals, over-fitting, a provider glitch),
and in a regulated plant a model that drafts worse SOPs is worse than no new model. So when a
run succeeds, the candidate and the current model (the active fine-tune, or the base model in
retrieval mode when none is active) draft SOPs for the same evaluation prompts, and both are
scored the same way:

* compliance   share of drafts that pass the house-format check (`sop_format.validate`),
* coverage     share of the template's required sections present and not blank,
* similarity   ROUGE-L F1 between draft and approved reference, section by section,
* length       closeness of the draft's length to the reference's (1.0 = same length).

Evaluation prompts are the held-out approved examples (`examples.eval_holdout_ids`, never in
any training snapshot) plus optional curated prompts from EVAL_PROMPTS_FILE, at most
EVAL_MAX_PROMPTS. The candidate is promoted when neither its aggregate score nor its compliance
rate is more than EVAL_TOLERANCE below the current model's.

Evidence before promotion: with fewer than EVAL_MIN_PROMPTS prompts (a young library holds
nothing out), the curated prompts shipped with the template (`<template>_eval_prompts.toml`,
one per typical SOP kind) are added; if there are still too few, the gate refuses to promote
and says how many approved SOPs or curated prompts are missing. It never promotes without a
comparison. The decision, the scores and the prompts used are stored with the run.

The rooms: `metrics` (scoring one draft and a model over all cases), `cases` (the evaluation
set: held-out approved examples and curated prompts), `gate` (drafting with both models, the
decision, the report). This package re-exports the names other code imports.
"""

from sop_pipeline.evaluation.cases import (
    TEMPLATE_PROMPTS_SUFFIX,
    EvalCase,
    EvaluationError,
    evaluation_cases,
    load_prompt_file,
    template_cases,
    template_prompts_path,
)
from sop_pipeline.evaluation.gate import (
    GateDecision,
    baseline_for,
    comparison_table,
    decide,
    evaluate_model,
    evaluate_on_demand,
    gate,
    prompts_used,
)
from sop_pipeline.evaluation.metrics import (
    MAX_LCS_WORDS,
    METRIC_LABELS,
    MODE_FINE_TUNED,
    MODE_RETRIEVAL,
    WEIGHTS,
    CaseScore,
    Mode,
    ModelScores,
    failed_case,
    lcs_length,
    length_closeness,
    rouge_l_f1,
    score_draft,
    words,
)

__all__ = [
    "MAX_LCS_WORDS", "METRIC_LABELS", "MODE_FINE_TUNED", "MODE_RETRIEVAL",
    "TEMPLATE_PROMPTS_SUFFIX", "WEIGHTS", "CaseScore", "EvalCase", "EvaluationError",
    "GateDecision", "Mode", "ModelScores", "baseline_for", "comparison_table", "decide",
    "evaluate_model", "evaluate_on_demand", "evaluation_cases", "failed_case", "gate",
    "lcs_length", "length_closeness", "load_prompt_file", "prompts_used", "rouge_l_f1",
    "score_draft", "template_cases", "template_prompts_path", "words",
]
