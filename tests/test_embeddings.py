"""Optional embeddings: off by default (full text alone, no vector package imported); on, each
approval stores a vector (fake /v1/embeddings through the real openai client) and ranking
fuses words and meaning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sop_pipeline.examples import retract_example
from sop_pipeline.generation.retrieval import ids, ranker_for, retrieve
from sop_pipeline.importer import import_paths
from sop_pipeline.library import vectors
from sop_pipeline.services import build_services
from tests.conftest import DATA_DIR, make_settings

SOPS = DATA_DIR / "sops"
MODEL = "text-embedding-3-small"
# No example has these words; the fake embeds them like "pest" and "control".
REQUEST = "vermin eradication"
SYNONYMS = {"vermin": "pest", "eradication": "control"}
ROOT = Path(__file__).resolve().parents[1]


def by_words(doc) -> int:  # noqa: ANN001
    return len(doc.text.split())


@pytest.fixture
def embedding_services(database_url, tmp_path, fake_openai, pg_reason):  # noqa: ANN001, ANN201
    settings = make_settings(database_url, tmp_path / "data", openai_base_url=fake_openai.base_url,
                             sop_embeddings_model=MODEL)
    services = build_services(settings)
    if services.engine.dialect.name == "postgresql" and vectors.store_for(services.engine) is None:
        services.engine.dispose()
        pytest.skip("this PostgreSQL server has no pgvector extension (Debian's packages lack "
                    "it), so vectors cannot be stored in it")
    fake_openai.embedding_synonyms.update(SYNONYMS)
    yield services
    services.engine.dispose()


def import_fixtures(services) -> dict[str, int]:  # noqa: ANN001
    with services.session() as session:
        report = import_paths(session, services.template, services.settings, [SOPS],
                              actor="qa.lead")
    return {outcome.path.name: outcome.example_id for outcome in report.outcomes}


def test_without_the_setting_no_vector_package_is_imported(tmp_path):
    code = f"""
import sys
from pathlib import Path
from tests.conftest import make_settings
from sop_pipeline.services import build_services
from sop_pipeline.importer import import_paths
from sop_pipeline.generation.retrieval import ranker_for, retrieve
services = build_services(make_settings("sqlite:///{tmp_path / 'off.db'}", Path({str(tmp_path)!r})))
with services.session() as session:
    import_paths(session, services.template, services.settings, [Path({str(SOPS)!r})], actor="x")
with services.session() as session:
    found = retrieve(session, "pest control", k=3, token_budget=100000,
                     count_tokens=lambda d: 1, ranker=ranker_for(services))
assert found
print(sorted(m for m in ("apsw", "sqlite_vec", "sop_pipeline.library.vectors") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]"


def test_approvals_store_vectors_and_meaning_ranks_a_wordless_match_first(
        embedding_services, fake_openai):
    services = embedding_services
    by_file = import_fixtures(services)
    pest = by_file["10_pest_control_food.md"]
    calls = fake_openai.requests_to("/embeddings", "POST")
    assert calls and all(c.json["model"] == MODEL for c in calls)  # through the real client
    with services.session() as session:
        assert set(vectors.store_for(services.engine).missing(session, 100)) == set()
        words_only = retrieve(session, REQUEST, k=3, token_budget=100_000,
                              count_tokens=by_words)
        fused = retrieve(session, REQUEST, k=3, token_budget=100_000, count_tokens=by_words,
                         ranker=ranker_for(services))
    assert ids(words_only)[:1] != [pest]  # no shared word: full text cannot know
    assert ids(fused)[0] == pest


def test_retraction_removes_an_example_from_vector_search_at_once(embedding_services):
    services = embedding_services
    pest = import_fixtures(services)["10_pest_control_food.md"]
    with services.session() as session:
        retract_example(session, actor="U1", example_id=pest)
        session.commit()
    with services.session() as session:
        fused = retrieve(session, REQUEST, k=3, token_budget=100_000, count_tokens=by_words,
                         ranker=ranker_for(services))
        nearest = vectors.store_for(services.engine).nearest(
            session, vectors.embedder(services.settings)([REQUEST])[0], 12)
    assert pest not in ids(fused) and pest not in nearest


def test_an_unreachable_embeddings_endpoint_falls_back_to_full_text(
        embedding_services, fake_openai):
    services = embedding_services
    import_fixtures(services)
    services.settings.sop_embeddings_model = "no-such-embedding-model"  # the fake answers 404
    vectors._client.cache_clear()
    fake_openai.check_contract_on_exit = True
    with services.session() as session:
        found = retrieve(session, "pest control", k=3, token_budget=100_000,
                         count_tokens=by_words, ranker=ranker_for(services))
    assert found and "Pest" in found[0].document.title


def test_reciprocal_rank_fusion():
    assert vectors.fuse([1, 2, 3], [3, 1]) == [1, 3, 2]
    assert vectors.fuse([], [5, 4]) == [5, 4]


def test_start_up_says_when_postgresql_lacks_pgvector(pg_url, tmp_path, caplog):
    settings = make_settings(pg_url, tmp_path / "data", sop_embeddings_model=MODEL)
    with caplog.at_level(logging.WARNING):
        services = build_services(settings)
    try:
        if vectors.store_for(services.engine) is not None:
            pytest.skip("this PostgreSQL server has pgvector")
        assert any("no pgvector extension" in r.getMessage() and "full-text search only"
                   in r.getMessage() for r in caplog.records)
    finally:
        services.engine.dispose()
