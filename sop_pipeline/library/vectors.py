"""Meaning, not only words (optional): a vector per approved example, searched in the same
database, fused with full-text ranking by reciprocal rank fusion.

Only imported when SOP_EMBEDDINGS_MODEL is set. Vectors come from any OpenAI-compatible
/v1/embeddings endpoint through the openai client. Where they live:

* SQLite: a sqlite-vec `vec0` table (`example_vector`, cosine distance) in the bot's database
  file. The standard library's sqlite3 here cannot load extensions, so vector reads and writes
  go through an apsw connection to the same file (SQLite's own locking keeps the two apart).
* PostgreSQL: a pgvector column with an HNSW index, when the server has the extension. When
  it does not, start-up says so in a sentence and drafts rank by full text alone.

The table is made on first use, sized to the model's vectors. A vector is written right after
the approval's transaction commits (an approval never waits on, or fails because of, the
embeddings endpoint); examples approved before the setting was on are filled in a few at a
time after each new approval. Retracted examples stay out of results because every vector
search joins the example's current status.
"""

from __future__ import annotations

import functools
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event, text
from sqlmodel import Session

from sop_pipeline.library import search

if TYPE_CHECKING:
    from sop_pipeline.settings import Settings

log = logging.getLogger(__name__)

RRF_K = 60  # the usual constant of reciprocal rank fusion: rank 1 counts 1/61
EMBED_CHARS = 6000  # title, prompt and the start of the text: well inside 8,192 tokens
BACKFILL_PER_APPROVAL = 32
VECTOR_TABLE = search.VECTOR_TABLE

Embed = Callable[[list[str]], list[list[float]]]


# --- embeddings ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _client(base_url: str | None, api_key: str, timeout: float):  # noqa: ANN202
    import openai

    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=2)


def embedder(settings: Settings) -> Embed:
    """Texts -> vectors with SOP_EMBEDDINGS_MODEL at SOP_EMBEDDINGS_BASE_URL (else the chat
    endpoint's OPENAI_BASE_URL)."""
    base_url = settings.sop_embeddings_base_url or settings.openai_base_url or None
    client = _client(base_url, settings.secret("openai_api_key") or "not-needed",
                     settings.openai_timeout_seconds)
    model = settings.sop_embeddings_model

    def embed(texts: list[str]) -> list[list[float]]:
        # Floats, as the API reference documents (the SDK otherwise asks for base64).
        response = client.embeddings.create(model=model, input=texts, encoding_format="float")
        return [list(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]

    return embed


def example_text(title: str, prompt: str, body: str) -> str:
    return f"{title}\n{prompt}\n{body}"[:EMBED_CHARS]


# --- where vectors live ----------------------------------------------------------------------


class VectorStore:
    def upsert(self, items: Sequence[tuple[int, list[float]]]) -> None:
        raise NotImplementedError

    def nearest(self, session: Session, vector: list[float], limit: int) -> list[int]:
        raise NotImplementedError

    def missing(self, session: Session, limit: int) -> list[tuple[int, str, str, str]]:
        raise NotImplementedError


class SqliteVecStore(VectorStore):
    """sqlite-vec through apsw on the same database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _conn(self):  # noqa: ANN202 - apsw.Connection, one per thread
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import apsw
            import sqlite_vec

            conn = apsw.Connection(self.path)
            conn.set_busy_timeout(30_000)
            conn.enable_load_extension(True)
            conn.load_extension(sqlite_vec.loadable_path())
            conn.enable_load_extension(False)
            self._local.conn = conn
        return conn

    def _exists(self) -> bool:
        return bool(self._conn().execute(
            "SELECT 1 FROM sqlite_master WHERE name = ?", (VECTOR_TABLE,)).fetchall())

    def upsert(self, items: Sequence[tuple[int, list[float]]]) -> None:
        if not items:
            return
        conn = self._conn()
        with conn:  # one transaction
            conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {VECTOR_TABLE} USING vec0("
                f"example_id integer primary key, embedding float[{len(items[0][1])}] "
                "distance_metric=cosine)")
            for example_id, vector in items:
                conn.execute(f"DELETE FROM {VECTOR_TABLE} WHERE example_id = ?", (example_id,))
                conn.execute(f"INSERT INTO {VECTOR_TABLE}(example_id, embedding) VALUES (?, ?)",
                             (example_id, _float32(vector)))

    def nearest(self, session: Session, vector: list[float], limit: int) -> list[int]:
        if limit <= 0 or not self._exists():
            return []
        rows = self._conn().execute(
            f"SELECT v.example_id FROM (SELECT example_id, distance FROM {VECTOR_TABLE} "
            "WHERE embedding MATCH ? AND k = ?) AS v "
            "JOIN training_example t ON t.id = v.example_id WHERE t.status = 'approved' "
            "ORDER BY v.distance", (_float32(vector), limit * 2)).fetchall()
        return [int(r[0]) for r in rows][:limit]

    def missing(self, session: Session, limit: int) -> list[tuple[int, str, str, str]]:
        known = (f"AND NOT EXISTS (SELECT 1 FROM {VECTOR_TABLE} v WHERE v.example_id = t.id)"
                 if self._exists() else "")
        rows = self._conn().execute(
            "SELECT t.id, coalesce(t.title, ''), t.prompt, t.sop_text FROM training_example t "
            f"WHERE t.status = 'approved' {known} ORDER BY t.id DESC LIMIT ?", (limit,))
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


class PgVectorStore(VectorStore):
    """pgvector in the bot's PostgreSQL database (HNSW index, cosine distance)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ready = False

    def upsert(self, items: Sequence[tuple[int, list[float]]]) -> None:
        if not items:
            return
        with self.engine.begin() as conn:
            if not self._ready:
                conn.execute(text(
                    f"CREATE TABLE IF NOT EXISTS {VECTOR_TABLE} (example_id integer PRIMARY KEY "
                    "REFERENCES training_example(id) ON DELETE CASCADE, "
                    f"embedding vector({len(items[0][1])}) NOT NULL)"))
                conn.execute(text(
                    f"CREATE INDEX IF NOT EXISTS ix_{VECTOR_TABLE}_hnsw ON {VECTOR_TABLE} "
                    "USING hnsw (embedding vector_cosine_ops)"))
                self._ready = True
            for example_id, vector in items:
                conn.execute(text(
                    f"INSERT INTO {VECTOR_TABLE}(example_id, embedding) "
                    "VALUES (:id, CAST(:v AS vector)) ON CONFLICT (example_id) "
                    "DO UPDATE SET embedding = EXCLUDED.embedding"),
                    {"id": example_id, "v": _literal(vector)})

    def nearest(self, session: Session, vector: list[float], limit: int) -> list[int]:
        if limit <= 0 or not _pg_table_exists(session):
            return []
        rows = session.execute(text(
            f"SELECT v.example_id FROM {VECTOR_TABLE} v JOIN training_example t "
            "ON t.id = v.example_id WHERE t.status = 'approved' "
            "ORDER BY v.embedding <=> CAST(:v AS vector) LIMIT :n"),
            {"v": _literal(vector), "n": limit})
        return [int(r[0]) for r in rows]

    def missing(self, session: Session, limit: int) -> list[tuple[int, str, str, str]]:
        known = (f"AND NOT EXISTS (SELECT 1 FROM {VECTOR_TABLE} v WHERE v.example_id = t.id)"
                 if _pg_table_exists(session) else "")
        rows = session.execute(text(
            "SELECT t.id, coalesce(t.title, ''), t.prompt, t.sop_text FROM training_example t "
            f"WHERE t.status = 'approved' {known} ORDER BY t.id DESC LIMIT :n"), {"n": limit})
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


def _pg_table_exists(session: Session) -> bool:
    return session.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                           {"t": VECTOR_TABLE}).scalar_one()


def _float32(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def _literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


def pgvector_available(engine: Engine) -> bool:
    """The server has pgvector (installing it into the database if it is not yet)."""
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first():
            return True
        if not conn.execute(text(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first():
            return False
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.commit()
        return True


_STORES: dict[int, VectorStore | None] = {}
_STORES_LOCK = threading.Lock()


def store_for(engine: Engine) -> VectorStore | None:
    """The engine's vector store, or None when its database cannot hold vectors."""
    key = id(engine)
    with _STORES_LOCK:
        if key in _STORES:
            return _STORES[key]
    store: VectorStore | None
    if engine.dialect.name == "postgresql":
        store = PgVectorStore(engine) if pgvector_available(engine) else None
    else:
        store = SqliteVecStore(engine.url.database or ":memory:")
    with _STORES_LOCK:
        _STORES[key] = store
    return store


def startup_problem(engine: Engine, settings: Settings) -> str | None:
    """A sentence for the start-up log when embeddings are set but cannot be used."""
    if not settings.sop_embeddings_model:
        return None
    if engine.dialect.name == "postgresql":
        if store_for(engine) is None:
            return ("SOP_EMBEDDINGS_MODEL is set, but this PostgreSQL server has no pgvector "
                    "extension, so drafts rank examples by full-text search only; install "
                    "pgvector on the server or unset SOP_EMBEDDINGS_MODEL.")
        return None
    try:
        import apsw  # noqa: F401
        import sqlite_vec  # noqa: F401
    except ImportError:
        return ("SOP_EMBEDDINGS_MODEL is set, but the sqlite-vec and apsw packages are not "
                "installed, so drafts rank examples by full-text search only; run "
                "`pip install sqlite-vec apsw` or unset SOP_EMBEDDINGS_MODEL.")
    return None


# --- writing vectors -------------------------------------------------------------------------


def index_examples(engine: Engine, settings: Settings,
                   items: Sequence[tuple[int, str, str, str]]) -> None:
    """Embed (id, title, prompt, text) examples and store their vectors."""
    store = store_for(engine)
    if store is None or not items:
        return
    vectors = embedder(settings)([example_text(t, p, b) for _, t, p, b in items])
    store.upsert([(item[0], vector) for item, vector in zip(items, vectors, strict=True)])


def after_approval(session: Session, settings: Settings, example_id: int, title: str,
                   prompt: str, body: str) -> None:
    """Give the example its vector once the approval's transaction has committed (plus a few
    older examples still without one). Failures are logged: full text still finds it."""
    # The process's pooled engine: during after_commit the session still holds its own
    # connection, which on SQLite is the process's one writing connection.
    engine = session.info.get("engine") or session.get_bind().engine

    def index(_session: Session) -> None:
        try:
            with Session(engine) as own:  # committed and still approved (not rolled back)?
                status = own.execute(text("SELECT status FROM training_example WHERE id = :i"),
                                     {"i": example_id}).scalar_one_or_none()
            if status != "approved":
                return
            index_examples(engine, settings, [(example_id, title, prompt, body)])
            store = store_for(engine)
            if store is not None:
                with Session(engine) as own:
                    older = store.missing(own, BACKFILL_PER_APPROVAL)
                index_examples(engine, settings, older)
        except Exception:  # noqa: BLE001 - the approval is stored; ranking falls back to text
            log.warning("could not store the embedding of example %s", example_id,
                        exc_info=True)

    event.listen(session, "after_commit", index, once=True)


# --- ranking ---------------------------------------------------------------------------------


def fuse(*rankings: Sequence[int]) -> list[int]:
    """Reciprocal rank fusion: each ranking adds 1 / (RRF_K + rank) to an id's score."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, example_id in enumerate(ranking, start=1):
            scores[example_id] = scores.get(example_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores, key=lambda i: (-scores[i], -i))


def fused_ranker(services) -> Callable[[Session, str, int], list[int]]:  # noqa: ANN001
    """Full text and vector similarity fused; full text alone when vectors are unavailable."""
    settings = services.settings
    embed = embedder(settings)

    def rank(session: Session, request: str, limit: int) -> list[int]:
        words = [hit.id for hit in search.full_text(session, request, limit)]
        store = store_for(services.engine)
        if store is None:
            return words
        try:
            meaning = store.nearest(session, embed([request or " "])[0], limit)
        except Exception:  # noqa: BLE001 - a draft still gets examples by its words
            log.warning("vector search failed; ranking by full text only", exc_info=True)
            return words
        return fuse(words, meaning)[:limit]

    return rank
