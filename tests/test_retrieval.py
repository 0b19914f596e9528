"""Retrieval of similar approved SOPs: BM25 ranking, k, token budget, approved-only."""

from __future__ import annotations

import hashlib

from sop_pipeline.generation.retrieval import (
    Document,
    approved_documents,
    rank,
    select_examples,
    terms,
)
from sop_pipeline.models import TrainingExample

LIBRARY = [
    Document(1, "Cleaning of Tablet Compression Machine", "Write an SOP for cleaning of the "
             "tablet press", "Dismantle the punches and dies. Clean with purified water."),
    Document(2, "Operation of Autoclave", "Write an SOP for autoclave operation",
             "Load the chamber. Start the sterilization cycle at 121 °C."),
    Document(3, "Calibration of Analytical Balance", "Write an SOP for balance calibration",
             "Check the balance with standard weights every day."),
    Document(4, "Pest Control", "Write an SOP for pest control in the warehouse",
             "Inspect the rodent bait stations weekly; clean the warehouse floor."),
]


def by_words(doc: Document) -> int:
    return len(doc.text.split())


def test_words_are_normalised_so_inflections_match():
    assert terms("Cleaning the machines") == terms("cleaned machine")
    assert terms("Calibration of balances") == terms("calibrate balance")
    assert "sop" not in terms("Write an SOP for cleaning")


def test_the_most_similar_sop_ranks_first():
    ranked = rank("Write an SOP for cleaning of the tablet compression machine", LIBRARY)
    assert ranked[0][0].id == 1
    assert ranked[0][1] > ranked[1][1]
    assert rank("How to calibrate the balance", LIBRARY)[0][0].id == 3
    assert rank("sterilisation in the autoclave", LIBRARY)[0][0].id == 2


def test_title_words_weigh_more_than_body_words():
    # "warehouse" is in the pest control title+prompt; "clean" only in its body
    ranked = rank("cleaning", LIBRARY)
    assert ranked[0][0].id == 1


def test_k_and_budget_limit_the_examples_and_big_ones_are_skipped():
    chosen = select_examples("cleaning tablet press", LIBRARY, k=2, token_budget=1000,
                             count_tokens=by_words)
    assert [c.document.id for c in chosen] == [1, 4]

    def doc_one_is_huge(doc: Document) -> int:
        return 500 if doc.id == 1 else 40

    tight = select_examples("cleaning tablet press", LIBRARY, k=2, token_budget=100,
                            count_tokens=doc_one_is_huge)
    assert [c.document.id for c in tight] == [4, 3]  # doc 1 is skipped, the next ones fit
    assert sum(c.tokens for c in tight) <= 100


def test_unrelated_request_still_gets_format_examples():
    chosen = select_examples("xylophone", LIBRARY, k=2, token_budget=1000,
                             count_tokens=by_words)
    assert len(chosen) == 2 and all(c.score == 0 for c in chosen)
    assert [c.document.id for c in chosen] == [4, 3]  # newest first on ties


def test_nothing_when_k_or_budget_is_zero_or_library_empty():
    assert select_examples("cleaning", LIBRARY, k=0, token_budget=100,
                           count_tokens=by_words) == []
    assert select_examples("cleaning", LIBRARY, k=3, token_budget=0,
                           count_tokens=by_words) == []
    assert select_examples("cleaning", [], k=3, token_budget=100, count_tokens=by_words) == []


def test_only_approved_examples_are_retrieved_from_the_database(services):
    with services.session() as session:
        for doc, status in zip(LIBRARY, ["approved", "retracted", "approved", "approved"],
                               strict=True):
            session.add(TrainingExample(
                title=doc.title, prompt=doc.prompt, sop_text=doc.text, status=status,
                content_hash=hashlib.sha256(doc.text.encode()).hexdigest(),
            ))
        session.commit()

    with services.session() as session:
        documents = approved_documents(session)
    titles = {d.title for d in documents}
    found = select_examples("autoclave operation", documents, k=3, token_budget=1000,
                            count_tokens=by_words)
    assert "Operation of Autoclave" not in titles
    assert len(titles) == 3
    assert "Operation of Autoclave" not in {r.document.title for r in found}
