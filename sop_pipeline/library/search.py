"""Full-text search over approved examples, in the database that stores them.

SQLite ranks with FTS5's bm25, PostgreSQL with the same BM25 over its English-stemmed
tsvectors; both weigh title 3 : prompt 2 : text 1 and stem English words, so the same request
finds the same few examples on either (a test checks the top 3 agree on the fixture
library). The index is built and kept in step by database triggers (migration
0002_retrieval) and holds approved rows only: a retracted example is out of search as soon as
its transaction commits.

PostgreSQL's own ranks (ts_rank_cd) know no inverse document frequency, and computing them
means decompressing every matching tsvector; so the migration keeps each approved example's
weighted tsvector as rows of an inverted index (lexeme, example, weighted count) and BM25 is one
indexed aggregate, computed exactly as FTS5 does.

A search returns ids and scores only; `fetch` then reads the texts of the few chosen rows.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlmodel import Session

INDEX_TABLE = "example_search"
VECTOR_TABLE = "example_vector"
MAX_QUERY_WORDS = 48  # a 2,000-character request has a few hundred words; ranking needs fewer

_WORD_RE = re.compile(r"[a-z0-9]+")
# Words every request has ("write an SOP for ...") carry no meaning for ranking.
STOPWORDS = frozenset(
    """a an and are as at be by for from has have in into is it its of on or that the this to
    was were will with write writing draft create make new please sop sops standard operating
    procedure procedures our your we i me you about using use""".split()
)
BM25_K1, BM25_B = 1.2, 0.75  # FTS5's constants, used on PostgreSQL too
STATS_CACHE_SECONDS = 300.0  # document frequencies move slowly; counting them per draft costs
STATS_WAIT_SECONDS = 10.0  # at most this long for another draft's count of the same word
# From this size on, words in half the library or more are left out of the search: BM25 gives
# them (next to) no weight, and matching them means ranking most of the library per draft.
COMMON_WORDS_FROM = 1000

_SQLITE_SEARCH = text(
    "SELECT rowid, -bm25(example_search, 3.0, 2.0, 1.0) AS score FROM example_search "
    "WHERE example_search MATCH :q ORDER BY score DESC, rowid DESC LIMIT :n"
)
_SQLITE_DF = text("SELECT count(*) FROM example_search WHERE example_search MATCH :q")
_SQLITE_TOTAL = text("SELECT count(*), 1.0 FROM training_example WHERE status = 'approved'")
# BM25 exactly as FTS5 computes it, over the lexeme table; weights per word come as arrays.
_PG_SEARCH = text(
    "SELECT t.example_id, sum(w.idf * t.tf * (:k1 + 1) / "
    "(t.tf + :k1 * (1 - :b + :b * t.length / :avgdl))) AS score "
    "FROM unnest(CAST(:lexemes AS text[]), CAST(:idfs AS float8[])) AS w(lexeme, idf) "
    "JOIN example_search_term t ON t.lexeme = w.lexeme "
    "WHERE t.lexeme = ANY(CAST(:lexemes AS text[])) "  # lets the planner use the index
    "GROUP BY t.example_id ORDER BY score DESC, t.example_id DESC LIMIT :n"
)
_PG_LEXEMES = text(
    "SELECT w, array_to_string(tsvector_to_array(to_tsvector('english', w)), ' ') "
    "FROM unnest(CAST(:words AS text[])) AS w"
)
_PG_DF = text(
    "SELECT lexeme, count(*) FROM example_search_term "
    "WHERE lexeme = ANY(CAST(:lexemes AS text[])) GROUP BY lexeme"
)
_PG_TOTAL = text("SELECT count(*), coalesce(avg(length), 1) FROM example_search")
_NEWEST = text(
    "SELECT id FROM training_example WHERE status = 'approved' ORDER BY id DESC LIMIT :n"
)
_FETCH = text(
    "SELECT id, title, prompt, sop_text, token_count FROM training_example "
    "WHERE status = 'approved' AND id IN :ids"
).bindparams(bindparam("ids", expanding=True))


@dataclass(frozen=True)
class Hit:
    """An approved example's id and how well it matches (higher is better; per database)."""

    id: int
    score: float


def is_index_table(name: str | None) -> bool:
    """Tables the search index owns (FTS5 adds shadow tables): not in models.py by design."""
    return name is not None and (name.startswith(INDEX_TABLE) or name.startswith(VECTOR_TABLE))


def query_words(request: str) -> list[str]:
    """The request's distinct meaningful words, in order (the databases stem them)."""
    seen: dict[str, None] = {}
    for word in _WORD_RE.findall(request.lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
            if len(seen) >= MAX_QUERY_WORDS:
                break
    return list(seen)


def full_text(session: Session, request: str, limit: int) -> list[Hit]:
    """The `limit` approved examples that best match `request`, best first (ties: newest)."""
    words = query_words(request)
    if not words or limit <= 0:
        return []
    stats = _stats(session)
    if session.get_bind().dialect.name == "postgresql":
        return _pg_full_text(session, stats, words, limit)
    df = stats.document_frequencies(words, lambda missing: {
        word: int(session.execute(_SQLITE_DF, {"q": f'"{word}"'}).scalar_one())
        for word in missing})
    words = stats.informative(words, df)
    if not words:
        return []
    match = " OR ".join(f'"{word}"' for word in words)
    rows = session.execute(_SQLITE_SEARCH, {"q": match, "n": limit})
    return [Hit(int(row[0]), float(row[1])) for row in rows]


def _pg_full_text(session: Session, stats: _Stats, words: list[str], limit: int) -> list[Hit]:
    lexeme_of = stats.lexemes(words, lambda missing: {
        str(w): (lx or "") for w, lx in session.execute(_PG_LEXEMES, {"words": missing})})
    words = [w for w in words if lexeme_of.get(w)]  # PostgreSQL's own stop words drop out
    df_by_lexeme = stats.document_frequencies([lexeme_of[w] for w in words], lambda missing: {
        **dict.fromkeys(missing, 0),
        **{str(lx): int(n) for lx, n in session.execute(_PG_DF, {"lexemes": missing})}})
    df = {w: df_by_lexeme[lexeme_of[w]] for w in words}
    words = stats.informative(words, df)
    if not words:
        return []
    params = {"lexemes": [lexeme_of[w] for w in words],
              "idfs": [stats.idf(df[w]) for w in words],
              "k1": BM25_K1, "b": BM25_B, "avgdl": stats.avg_length, "n": limit}
    return [Hit(int(r[0]), float(r[1])) for r in session.execute(_PG_SEARCH, params)]


class _Stats:
    """Library size, mean length and per-word document frequencies of one database, cached
    for a few minutes (a word not in the library yet is asked again next time)."""

    def __init__(self, total: int, avg_length: float, when: float) -> None:
        self.total, self.avg_length, self.when = total, avg_length, when
        self._df: dict[str, int] = {}
        self._lexemes: dict[str, str] = {}
        self._lock = threading.Lock()
        # A word being counted, by the draft counting it: drafts arriving meanwhile (a burst
        # asking about the same machine) wait for that count instead of each counting
        # thousands of rows again.
        self._counting: dict[str, threading.Event] = {}

    def document_frequencies(self, keys: list[str], count) -> dict[str, int]:  # noqa: ANN001
        with self._lock:
            missing = [k for k in dict.fromkeys(keys) if k not in self._df]
            waits = [self._counting[k] for k in missing if k in self._counting]
            mine = [k for k in missing if k not in self._counting]
            done = threading.Event()
            self._counting.update(dict.fromkeys(mine, done))
        found: dict[str, int] = {}
        try:
            found = count(mine) if mine else {}
        finally:
            with self._lock:
                self._df.update({k: v for k, v in found.items() if v})
                for k in mine:
                    del self._counting[k]
            done.set()
        for event in waits:
            event.wait(STATS_WAIT_SECONDS)
        with self._lock:  # a word nobody has is not kept: it is asked again next time
            return {k: self._df.get(k, found.get(k, 0)) for k in keys}

    def lexemes(self, words: list[str], stem) -> dict[str, str]:  # noqa: ANN001
        with self._lock:
            missing = [w for w in words if w not in self._lexemes]
        found = stem(missing) if missing else {}
        with self._lock:
            self._lexemes.update(found)
            return {w: self._lexemes.get(w, "") for w in words}

    def idf(self, df: int) -> float:
        """FTS5's: log((N - df + 0.5) / (df + 0.5)), at least 1e-6. N was counted by an
        earlier statement (or minutes ago), so approvals committed since may have made df
        the larger: N is taken as at least df."""
        total = max(self.total, df)
        return max(math.log((total - df + 0.5) / (df + 0.5)), 1e-6)

    def informative(self, words: list[str], df: dict[str, int]) -> list[str]:
        """Words some example has; in a large library, only those in under half of it."""
        kept = [w for w in words if df.get(w)]
        if self.total >= COMMON_WORDS_FROM:
            kept = [w for w in kept if self.total - df[w] + 0.5 > df[w] + 0.5]
        return kept


_STATS: dict[str, _Stats] = {}
_STATS_LOCK = threading.Lock()


def _stats(session: Session) -> _Stats:
    database = str(session.get_bind().engine.url)
    now = time.monotonic()
    with _STATS_LOCK:
        stats = _STATS.get(database)
    # A small library is counted afresh each time (cheap); a large one every few minutes.
    if (stats is None or stats.total < COMMON_WORDS_FROM
            or now - stats.when >= STATS_CACHE_SECONDS):
        postgres = session.get_bind().dialect.name == "postgresql"
        total, avg_length = session.execute(_PG_TOTAL if postgres else _SQLITE_TOTAL).one()
        stats = _Stats(int(total), max(float(avg_length or 1), 1.0), now)
        with _STATS_LOCK:
            _STATS[database] = stats
    return stats


def forget_statistics() -> None:
    """Drop the cached library statistics (tests and benchmarks that rebuild a database)."""
    with _STATS_LOCK:
        _STATS.clear()


def newest(session: Session, limit: int) -> list[int]:
    """Ids of the newest approved examples (fill-ins when few match: they still show the
    house format, which is the main point of an example)."""
    if limit <= 0:
        return []
    return [int(row[0]) for row in session.execute(_NEWEST, {"n": limit})]


def fetch(session: Session, ids: Sequence[int]) -> dict[int, tuple[str, str, str, int]]:
    """(title, prompt, text, stored token count) of the given examples still approved."""
    if not ids:
        return {}
    rows = session.execute(_FETCH, {"ids": list(ids)})
    return {int(r[0]): (r[1] or "", r[2], r[3], int(r[4] or 0)) for r in rows}
