"""full-text search index over approved examples

Revision ID: 0002_retrieval
Revises: 0001

SQLite: an FTS5 table (porter stemming, bm25) over training_example's title, prompt and text,
as "external content" (the text stays in training_example; the index holds only postings).
PostgreSQL: the English-stemmed, weighted tsvector of each approved example stored as an
inverted index (lexeme, example, weighted count) with BM25 computed by one indexed aggregate.

Database triggers keep the index in step, so every write path (approval, retraction,
re-approval, import, a hand-run UPDATE) is covered without the code having to remember it.
Only approved rows are in the index: retraction removes an example from search in the same
transaction. The index is not a SQLModel table (a virtual table on SQLite), so models.py does
not declare it; `sop_pipeline.library.search.is_index_table` tells Alembic to leave it alone.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_retrieval"
down_revision: str | None = "0002_people"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same three fields, weighted title 3 : prompt 2 : text 1 on both databases.
_SQLITE_ROW = "{row}.id, coalesce({row}.title, ''), {row}.prompt, {row}.sop_text"
_SQLITE_UP = [
    """CREATE VIRTUAL TABLE example_search USING fts5(
        title, prompt, sop_text, content='training_example', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    # External content: a row leaves the index by a 'delete' command carrying its old values,
    # and only rows that were approved (so indexed) may be deleted that way.
    f"""CREATE TRIGGER example_search_insert AFTER INSERT ON training_example
        WHEN new.status = 'approved' BEGIN
        INSERT INTO example_search(rowid, title, prompt, sop_text)
        VALUES ({_SQLITE_ROW.format(row='new')});
    END""",
    f"""CREATE TRIGGER example_search_delete AFTER DELETE ON training_example
        WHEN old.status = 'approved' BEGIN
        INSERT INTO example_search(example_search, rowid, title, prompt, sop_text)
        VALUES ('delete', {_SQLITE_ROW.format(row='old')});
    END""",
    f"""CREATE TRIGGER example_search_update
        AFTER UPDATE OF status, title, prompt, sop_text ON training_example BEGIN
        INSERT INTO example_search(example_search, rowid, title, prompt, sop_text)
        SELECT 'delete', {_SQLITE_ROW.format(row='old')} WHERE old.status = 'approved';
        INSERT INTO example_search(rowid, title, prompt, sop_text)
        SELECT {_SQLITE_ROW.format(row='new')} WHERE new.status = 'approved';
    END""",
    """INSERT INTO example_search(rowid, title, prompt, sop_text)
       SELECT id, coalesce(title, ''), prompt, sop_text FROM training_example
       WHERE status = 'approved'""",
]
_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS example_search_update",
    "DROP TRIGGER IF EXISTS example_search_delete",
    "DROP TRIGGER IF EXISTS example_search_insert",
    "DROP TABLE IF EXISTS example_search",
]

_PG_DOCUMENT = (
    "setweight(to_tsvector('english', coalesce({row}.title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce({row}.prompt, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce({row}.sop_text, '')), 'D')"
)
# PostgreSQL: the weighted tsvector of each approved example, kept as an inverted index of
# (lexeme, example, weighted count) rows so BM25 is one indexed aggregate. (ts_rank_cd over a
# GIN index had to decompress and rank every matching tsvector: 90 ms for 3,800 matches.)
_PG_UP = [
    """CREATE TABLE example_search (
        example_id integer PRIMARY KEY REFERENCES training_example(id) ON DELETE CASCADE,
        length integer NOT NULL)""",
    """CREATE TABLE example_search_term (
        lexeme text NOT NULL,
        example_id integer NOT NULL REFERENCES example_search(example_id) ON DELETE CASCADE,
        tf real NOT NULL,
        length integer NOT NULL,
        PRIMARY KEY (lexeme, example_id) INCLUDE (tf, length))""",  # index-only scans
    "CREATE INDEX ix_example_search_term_example ON example_search_term (example_id)",
    f"""CREATE FUNCTION example_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        doc tsvector;
        doc_length integer;
    BEGIN
        DELETE FROM example_search WHERE example_id = NEW.id;  -- its terms cascade
        IF NEW.status = 'approved' THEN
            doc := {_PG_DOCUMENT.format(row='NEW')};
            SELECT coalesce(sum(cardinality(u.positions)), 0) INTO doc_length FROM unnest(doc) u;
            INSERT INTO example_search(example_id, length) VALUES (NEW.id, doc_length);
            -- title 3 : prompt 2 : text 1 per occurrence, as bm25(example_search, 3, 2, 1)
            INSERT INTO example_search_term(lexeme, example_id, tf, length)
            SELECT u.lexeme, NEW.id,
                   (SELECT sum(CASE w WHEN 'A' THEN 3 WHEN 'B' THEN 2 ELSE 1 END)
                    FROM unnest(u.weights) AS w),
                   doc_length
            FROM unnest(doc) u;
        END IF;
        RETURN NULL;
    END $$""",
    # Deletes need no trigger: the foreign keys cascade.
    """CREATE TRIGGER example_search_sync
        AFTER INSERT OR UPDATE OF status, title, prompt, sop_text ON training_example
        FOR EACH ROW EXECUTE FUNCTION example_search_sync()""",
    # Build the index for what is already approved by running the trigger's own code.
    "UPDATE training_example SET status = status WHERE status = 'approved'",
]
_PG_DOWN = [
    "DROP TRIGGER IF EXISTS example_search_sync ON training_example",
    "DROP FUNCTION IF EXISTS example_search_sync()",
    "DROP TABLE IF EXISTS example_search_term",
    "DROP TABLE IF EXISTS example_search",
]


def _run(statements: list[str]) -> None:
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    # Counting by SQL reads this index only (SQLite keeps status and hash behind the text).
    op.create_index("ix_training_example_status_hash", "training_example",
                    ["status", "content_hash", "id"])
    if op.get_bind().dialect.name == "postgresql":
        _run(_PG_UP)
    else:
        _run(_SQLITE_UP)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _run(_PG_DOWN)
    else:
        _run(_SQLITE_DOWN)
    op.drop_index("ix_training_example_status_hash", table_name="training_example")
