"""Retrieval of approved SOPs similar to a request: the base model's examples before any
fine-tune exists (and whenever the fine-tuned model is gone).

Why BM25 in plain Python: it needs no network embedding model, gives the same ranking on
SQLite and PostgreSQL, and a plant's SOP library (hundreds to a few thousand documents) ranks
in milliseconds. Titles and prompts say what an SOP is *about*, so their words weigh more than
words in the body.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlmodel import Session, select

from sop_pipeline.models import ExampleStatus, TrainingExample

TITLE_WEIGHT = 3
PROMPT_WEIGHT = 2
BODY_WEIGHT = 1
BM25_K1 = 1.5
BM25_B = 0.75
TERMS_CACHE_SIZE = 2048  # documents whose term counts are kept (a few KB each)

_WORD_RE = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an and are as at be by for from has have in into is it its of on or that the this to
    was were will with write writing draft create make new please sop sops standard operating
    procedure procedures an our your we i me you about using use""".split()
)


@dataclass(frozen=True)
class Document:
    """An approved example as retrieval sees it (kept plain so benchmarks need no database)."""

    id: int
    title: str
    prompt: str
    text: str


@dataclass(frozen=True)
class Retrieved:
    """A chosen example and why: its BM25 score and the tokens it adds to the prompt."""

    document: Document
    score: float
    tokens: int


def _stem(word: str) -> str:
    """A tiny suffix stripper, enough for SOP titles: 'cleaning', 'cleaned', 'cleans' all
    become 'clean'; 'calibration', 'calibrated', 'calibrate' all become 'calibr'."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    for suffix in ("ation", "ate", "at"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, lightly stemmed words."""
    return [_stem(w) for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS]


def _document_terms(doc: Document) -> Counter[str]:
    """The document's weighted term counts (shared between calls: read, never change)."""
    return _weighted_terms(doc.title, doc.prompt, doc.text)


@functools.lru_cache(maxsize=TERMS_CACHE_SIZE)
def _weighted_terms(title: str, prompt: str, body: str) -> Counter[str]:
    # Cached by content: every draft ranks the whole library, and tokenising each SOP again
    # was most of a draft's retrieval time. Edited examples simply get a new entry.
    counts: Counter[str] = Counter()
    for weight, text in ((TITLE_WEIGHT, title), (PROMPT_WEIGHT, prompt), (BODY_WEIGHT, body)):
        for term in terms(text):
            counts[term] += weight
    return counts


def rank(query: str, documents: Sequence[Document]) -> list[tuple[Document, float]]:
    """All documents ordered by BM25 score for `query` (ties: newest id first)."""
    if not documents:
        return []
    bags = [_document_terms(doc) for doc in documents]
    lengths = [sum(bag.values()) for bag in bags]
    avg_length = (sum(lengths) / len(lengths)) or 1.0
    n_docs = len(documents)
    query_terms = set(terms(query))
    doc_freq = {t: sum(1 for bag in bags if t in bag) for t in query_terms}
    scored: list[tuple[Document, float]] = []
    for doc, bag, length in zip(documents, bags, lengths, strict=True):
        score = 0.0
        for term in query_terms:
            tf = bag.get(term, 0)
            if not tf:
                continue
            idf = math.log(1 + (n_docs - doc_freq[term] + 0.5) / (doc_freq[term] + 0.5))
            norm = tf + BM25_K1 * (1 - BM25_B + BM25_B * length / avg_length)
            score += idf * tf * (BM25_K1 + 1) / norm
        scored.append((doc, score))
    scored.sort(key=lambda pair: (-pair[1], -pair[0].id))
    return scored


def select_examples(
    query: str,
    documents: Sequence[Document],
    *,
    k: int,
    token_budget: int,
    count_tokens: Callable[[Document], int],
) -> list[Retrieved]:
    """The best `k` documents that fit in `token_budget` together, best first.

    A document too big for what is left of the budget is skipped in favour of the next one,
    so one huge SOP cannot crowd out every example. Documents with no shared word still
    qualify (after all matching ones): they show the house format, which is the main point.
    """
    chosen: list[Retrieved] = []
    remaining = token_budget
    if k <= 0 or token_budget <= 0:
        return chosen
    for doc, score in rank(query, documents):
        if len(chosen) >= k:
            break
        tokens = count_tokens(doc)
        if tokens > remaining:
            continue
        chosen.append(Retrieved(document=doc, score=score, tokens=tokens))
        remaining -= tokens
    return chosen


def approved_documents(session: Session) -> list[Document]:
    """Every approved example as a Document (retracted ones never serve as examples)."""
    query = select(TrainingExample).where(TrainingExample.status == ExampleStatus.APPROVED)
    return [
        Document(id=row.id or 0, title=row.title or "", prompt=row.prompt, text=row.sop_text)
        for row in session.exec(query)
    ]


def ids(retrieved: Iterable[Retrieved]) -> list[int]:
    return [item.document.id for item in retrieved]
