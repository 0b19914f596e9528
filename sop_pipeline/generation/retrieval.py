"""Retrieval of approved SOPs similar to a request: the base model's examples before any
fine-tune exists (and whenever the fine-tuned model is gone).

The database ranks (`sop_pipeline.library.search`: FTS5 bm25 on SQLite, ts_rank_cd on
PostgreSQL, optionally fused with vector similarity), so a draft reads the ids of a few
candidates and the texts of the ones it uses, whatever the size of the library. Titles and
prompts say what an SOP is *about*, so their words weigh more than words in the body.

`rank`/`select_examples` below rank a list in memory; only offline tools with no database
(benchmarks/prompt_cost.py) use them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlmodel import Session

from sop_pipeline.library import search

TITLE_WEIGHT = 3
PROMPT_WEIGHT = 2
BODY_WEIGHT = 1
BM25_K1 = 1.5
BM25_B = 0.75
CANDIDATES_PER_EXAMPLE = 4  # ids ranked per example wanted: spares for ones over the budget

_WORD_RE = re.compile(r"[a-z0-9]+")
STOPWORDS = search.STOPWORDS

Ranker = Callable[[Session, str, int], list[int]]


@dataclass(frozen=True)
class Document:
    """An approved example as retrieval sees it (kept plain so benchmarks need no database)."""

    id: int
    title: str
    prompt: str
    text: str
    tokens: int = 0  # the text's tokens, counted once at approval (0: not known)


EXAMPLE_MESSAGE_TOKENS = 8  # the two chat messages' framing around prompt and text


def example_messages(doc: Document) -> list[dict[str, str]]:
    """The two chat messages one retrieved example adds to a prompt (a request and its SOP)."""
    return [
        {"role": "user", "content": doc.prompt},
        {"role": "assistant", "content": doc.text},
    ]


def stored_example_tokens(doc: Document) -> int:
    """Tokens the example adds to a prompt, from the count stored at approval: tokenising
    three SOPs per draft cost as much as the search itself."""
    from sop_pipeline.tokens import count_chat_tokens, count_tokens

    if not doc.tokens:
        return count_chat_tokens(example_messages(doc)) - 3
    return doc.tokens + count_tokens(doc.prompt) + EXAMPLE_MESSAGE_TOKENS


@dataclass(frozen=True)
class Retrieved:
    """A chosen example and why: its rank score and the tokens it adds to the prompt."""

    document: Document
    score: float
    tokens: int


def full_text_ranker(session: Session, request: str, limit: int) -> list[int]:
    return [hit.id for hit in search.full_text(session, request, limit)]


def ranker_for(services) -> Ranker:  # noqa: ANN001 - Services (imported lazily elsewhere)
    """Full-text alone, or fused with vector similarity when SOP_EMBEDDINGS_MODEL is set (only
    then is a vector package imported)."""
    if not services.settings.sop_embeddings_model:
        return full_text_ranker
    from sop_pipeline.library import vectors

    return vectors.fused_ranker(services)


def retrieve(
    session: Session,
    request: str,
    *,
    k: int,
    token_budget: int,
    count_tokens: Callable[[Document], int],
    exclude: Collection[int] = (),
    ranker: Ranker = full_text_ranker,
) -> list[Retrieved]:
    """The best `k` approved examples for `request` that fit in `token_budget` together, best
    first, reading only candidates' ids and the chosen few rows' texts.

    A document too big for what is left of the budget is skipped in favour of the next one,
    so one huge SOP cannot crowd out every example. When fewer than needed share a word with
    the request, the newest approved examples fill in: they still show the house format.
    `exclude` hides ids (evaluation hides its held-out references).
    """
    if k <= 0 or token_budget <= 0:
        return []
    want = k * CANDIDATES_PER_EXAMPLE + len(exclude)
    ranked = [i for i in ranker(session, request, want) if i not in exclude]
    if len(ranked) < k * CANDIDATES_PER_EXAMPLE:
        seen = set(ranked)
        ranked += [i for i in search.newest(session, want)
                   if i not in seen and i not in exclude]
    chosen: list[Retrieved] = []
    remaining = token_budget
    for start in range(0, len(ranked), k):  # usually one read of k rows
        batch = ranked[start:start + k]
        rows = search.fetch(session, batch)
        for position, example_id in enumerate(batch, start=start):
            if example_id not in rows:
                continue  # retracted since it was ranked
            title, prompt, body, stored = rows[example_id]
            doc = Document(example_id, title, prompt, body, stored)
            tokens = count_tokens(doc)
            if tokens > remaining:
                continue
            chosen.append(Retrieved(doc, 1.0 / (1 + position), tokens))
            remaining -= tokens
            if len(chosen) >= k:
                return chosen
    return chosen


def ids(retrieved: Iterable[Retrieved]) -> list[int]:
    return [item.document.id for item in retrieved]


# --- in memory, for offline tools without a database ------------------------------------------


def _stem(word: str) -> str:
    """A tiny suffix stripper: 'cleaning', 'cleaned', 'cleans' all become 'clean'."""
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


def _weighted_terms(doc: Document) -> Counter[str]:
    counts: Counter[str] = Counter()
    for weight, part in ((TITLE_WEIGHT, doc.title), (PROMPT_WEIGHT, doc.prompt),
                         (BODY_WEIGHT, doc.text)):
        for term in terms(part):
            counts[term] += weight
    return counts


def rank(query: str, documents: Sequence[Document]) -> list[tuple[Document, float]]:
    """All documents ordered by BM25 score for `query` (ties: newest id first)."""
    if not documents:
        return []
    bags = [_weighted_terms(doc) for doc in documents]
    lengths = [sum(bag.values()) for bag in bags]
    avg_length = (sum(lengths) / len(lengths)) or 1.0
    query_terms = set(terms(query))
    doc_freq = {t: sum(1 for bag in bags if t in bag) for t in query_terms}
    scored: list[tuple[Document, float]] = []
    for doc, bag, length in zip(documents, bags, lengths, strict=True):
        score = 0.0
        for term in query_terms:
            tf = bag.get(term, 0)
            if tf:
                idf = math.log(1 + (len(documents) - doc_freq[term] + 0.5)
                               / (doc_freq[term] + 0.5))
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
    """In memory: the best `k` of `documents` that fit in `token_budget`, best first."""
    chosen: list[Retrieved] = []
    remaining = token_budget
    if k <= 0 or token_budget <= 0:
        return chosen
    for doc, score in rank(query, documents):
        if len(chosen) >= k:
            break
        tokens = count_tokens(doc)
        if tokens <= remaining:
            chosen.append(Retrieved(document=doc, score=score, tokens=tokens))
            remaining -= tokens
    return chosen
