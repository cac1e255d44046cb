"""Hybrid search (reciprocal-rank fusion), filters, the LlamaIndex retriever and the CLI verbs, on the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from knowledge_fixtures import CORPUS, cli_env, kn, write_corpus  # noqa: F401

from tandem.errors import ServiceUnavailable, UserError
from tandem.knowledge import reindex, search

TANDEM = str(Path(sys.executable).parent / "tandem")


@pytest.fixture(scope="module")
def indexed(settings, tmp_path_factory):
    """One small index for the whole module (searches do not change it)."""
    root = tmp_path_factory.mktemp("search") / "kb"
    write_corpus(root, CORPUS)
    s = settings.replace(index_name="search_module", sources=(f"acme={root}",), torch_threads=2, chunk_size=128,
                         chunk_overlap=16, canary_path=str(root / "no-golden.jsonl"))
    reindex.run(s, progress=False)
    return s


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "kb"
    write_corpus(root, CORPUS)
    return root


@pytest.mark.parametrize("fusion,keyword_weight,top_bonus", [("rrf", 1.0, False),
                                                             ("weighted-rrf", search.KEYWORD_WEIGHT, True)])
def test_hybrid_is_reciprocal_rank_fusion_of_both_lists(indexed, fusion, keyword_weight, top_bonus):
    q = "Pro plan price per month"
    big = 50
    vec = search.search(indexed, q, k=big, mode="vector")
    kw = search.search(indexed, q, k=big, mode="keyword")
    hyb = search.search(indexed.replace(retrieval_fusion=fusion), q, k=big, mode="hybrid")
    assert vec and kw
    expected = {}
    for ranked, weight in ((vec, 1.0), (kw, keyword_weight)):
        for rank, hit in enumerate(ranked, start=1):
            expected[hit.chunk_id] = expected.get(hit.chunk_id, 0.0) + weight / (search.RRF_K + rank)
    if top_bonus:  # the best vector match also counts as the keyword list's first
        expected[vec[0].chunk_id] += 1.0 / (search.RRF_K + 1)
    assert {h.chunk_id: round(h.score, 9) for h in hyb} == {c: round(s, 9) for c, s in expected.items()}
    assert [h.score for h in hyb] == sorted((h.score for h in hyb), reverse=True)
    # fusion, not concatenation: a chunk in both lists outranks one found by a single list
    both = set(h.chunk_id for h in vec) & set(h.chunk_id for h in kw)
    assert hyb[0].chunk_id in both
    assert hyb[0].doc_id == "acme/pricing/plans.md" and hyb[0].heading_path == "Pro"


def test_every_hit_has_a_vector_similarity(indexed):
    hits = search.search(indexed, "billing@acme.example refund", k=5, mode="keyword")
    assert hits and all(isinstance(h.vector_similarity, float) and -1.0 <= h.vector_similarity <= 1.0 for h in hits)
    assert hits[0].doc_id == "acme/policies/refunds.txt"
    hits = search.search(indexed, "support desk opening hours", k=3)
    assert all(h.vector_similarity is not None for h in hits)
    vec = search.search(indexed, "support desk opening hours", k=3, mode="vector")
    assert all(abs(h.score - h.vector_similarity) < 1e-5 for h in vec)
    assert vec[0].doc_id == "acme/support/hours.html" and vec[0].title == "Support hours"


def test_filters(indexed):
    hits = search.search(indexed, "plan", k=10, filters={"doc_id_prefix": "acme/security/"})
    assert hits and {h.doc_id for h in hits} == {"acme/security/sso.md"}
    hits = search.search(indexed, "plan", k=10, filters={"doc_id": ["acme/pricing/plans.md", "acme/policies/refunds.txt"]})
    assert hits and {h.doc_id for h in hits} <= {"acme/pricing/plans.md", "acme/policies/refunds.txt"}
    assert search.search(indexed, "plan", k=10, filters={"source": "other"}) == []
    hits = search.search(indexed, "installer", k=10, filters={"format": "markdown", "source": "acme"})
    assert hits and all(not h.doc_id.endswith(".txt") for h in hits)


@pytest.mark.parametrize("kwargs,match", [
    ({"query": "  "}, "empty"),
    ({"query": "x", "k": 0}, "between 1 and"),
    ({"query": "x", "mode": "magic"}, "unknown search mode"),
    ({"query": "x", "filters": {"colour": "red"}}, "unknown filter"),
])
def test_bad_search_input(indexed, kwargs, match):
    with pytest.raises(UserError, match=match):
        search.search(indexed, **kwargs)


def test_empty_index(kn):
    assert search.live_index_version(kn) is None
    with pytest.raises(ServiceUnavailable, match="empty"):
        search.search(kn, "anything")


def test_llamaindex_retriever(indexed):
    from llama_index.core.schema import NodeWithScore

    from tandem.knowledge.retriever import TandemRetriever

    nodes = TandemRetriever(indexed, k=3).retrieve("How do I set up SAML single sign-on?")
    assert len(nodes) == 3 and all(isinstance(n, NodeWithScore) for n in nodes)
    assert nodes[0].node.metadata["doc_id"] == "acme/security/sso.md"
    assert nodes[0].score == search.search(indexed, "How do I set up SAML single sign-on?", k=1)[0].score


def test_cli_search_and_status(indexed):
    env = cli_env(indexed)
    proc = subprocess.run([TANDEM, "search", "refund within 30 days", "-k", "2", "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert len(hits) == 2 and hits[0]["doc_id"] == "acme/policies/refunds.txt" and "vector_similarity" in hits[0]
    proc = subprocess.run([TANDEM, "search", "refund", "--filter", "source=acme"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and "file://" in proc.stdout and "refunds" in proc.stdout
    proc = subprocess.run([TANDEM, "search", "x", "--filter", "colour"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2 and "FIELD=VALUE" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([TANDEM, "index", "status", "--json"], capture_output=True, text=True, env=env, timeout=300)
    status = json.loads(proc.stdout)
    assert status["index_version"] == 1 and status["documents"] == 5 and status["chunks"] > 5
    assert status["last_run"]["status"] == "succeeded" and status["running"] is None
