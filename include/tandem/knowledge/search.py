"""Hybrid retrieval over the live index: vector (HNSW, cosine) + keyword (tsvector), fused with reciprocal-rank
fusion (RRF: score = sum over lists of 1 / (60 + rank)). Not concatenation: a chunk found by both lists
ranks above one found by either alone. With ``TANDEM_RETRIEVAL_FUSION=weighted-rrf`` (the default) the
keyword list counts 0.4 and the vector list's best chunk also counts as the keyword list's first, so the
closest semantic match stays in the top k when it shares no word with the question (``make bench-knowledge``,
section fusion, measures both).

- The query is embedded with the model of the *live* space (its fingerprint), so queries never mix spaces,
  and every statement filters on the published release (``releases``): one search reads exactly one
  release. pgvector's iterative index scan keeps HNSW recall under that filter.
- Keyword hits: ``websearch_to_tsquery`` (all words, quotes, -exclusions), ranked with ``ts_rank_cd``; when
  that finds fewer than the candidate count, the rest come from an any-word query ranked within a bounded
  pool of ``OR_POOL`` matches, so a query sharing one common word with most chunks stays fast.
- Every returned hit carries ``vector_similarity`` (cosine similarity of the chunk to the query), also hits
  found only by keywords, so callers can apply a refusal threshold.
- Filters: ``source``, ``doc_id`` (a value or a list), ``doc_id_prefix``, ``title``, ``format``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import psycopg
from psycopg import sql

from tandem import db
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import ServiceUnavailable, UserError
from tandem.knowledge import spaces, store
from tandem.knowledge.spaces import Space

RRF_K = 60
# "rrf": plain reciprocal-rank fusion. "weighted-rrf": the keyword list counts 0.4, and the vector list's best
# chunk also counts as if it led the keyword list. Plain RRF buries a chunk that only the vector search finds,
# however close it is (rank 1 in one list scores 1/61; rank 3 and 2 in both, 1/63 + 1/62): that is how a
# question's best semantic match with none of its words fell out of the top 3. Measured on the demo
# (bench-knowledge, section fusion; the model shown each chunk's section): keyword weight 0.3 and 0.4 give
# facts_in_context 0.957, 0.5 gives 0.942 (a free-trial chunk that only the vector search ranks high drops to
# 4th); the golden set is the same at all three (hit@5 1.000, MRR 0.921).
FUSIONS = ("rrf", "weighted-rrf")
KEYWORD_WEIGHT = 0.4
MODES = ("hybrid", "vector", "keyword")
FILTER_KEYS = ("source", "doc_id", "doc_id_prefix", "title", "format")
MAX_K = 100
OR_POOL = 500  # any-word keyword matches ranked per query (after the all-words matches)


@dataclasses.dataclass
class Hit:
    doc_id: str
    chunk_id: str
    title: str
    uri: str
    heading_path: str
    text: str
    score: float  # the fused score (RRF in hybrid mode; cosine similarity in vector mode; ts_rank in keyword mode)
    vector_similarity: float | None = None
    location: str = ""  # where in the document: "p. 12", "slide 3", "sheet Prices" ("" for text formats)

    @property
    def cited_as(self) -> str:
        """``manual.pdf p. 12``: the document's file name and the location, or the doc id alone."""
        return f"{self.doc_id.rsplit('/', 1)[-1]} {self.location}" if self.location else self.doc_id

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def snippet(self) -> str:
        text = " ".join(self.text.split())
        return text if len(text) <= 240 else text[:237] + "..."


# --- connections: one per thread and URL, reused across queries (a query is a few milliseconds)
_local = threading.local()


def _conn(url: str) -> psycopg.Connection:
    pool = getattr(_local, "conns", None)
    if pool is None:
        pool = _local.conns = {}
    conn = pool.get(url)
    if conn is None or conn.closed or conn.broken:
        conn = pool[url] = db.connect(url)
    return conn


def pin(settings: Settings) -> Space | None:
    """The live space and its published release as of now, or None when nothing is published yet. Pass it
    to ``search(at=...)`` so that several searches (an eval, an answer and its version) read one release."""
    n = store.names(settings.index_name)
    conn = _conn(settings.db_url)
    try:
        space = spaces.live(conn, n)
    finally:
        conn.rollback()
    return space if space is not None and space.index_version is not None else None


def live_index_version(settings: Settings) -> int | None:
    """The published release number of the live index, or None when nothing is indexed yet."""
    space = pin(settings)
    return space.index_version if space else None


def _validate(query: Any, k: Any, mode: Any, filters: Any) -> None:
    if not isinstance(query, str) or not query.strip():
        raise UserError("the search query is empty", fix="give a question or keywords, for example: tandem search \"pricing\"")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise UserError(f"k must be an integer between 1 and {MAX_K}, got {k!r}", fix="use -k 5")
    if mode not in MODES:
        raise UserError(f"unknown search mode {mode!r}", fix=f"use one of: {', '.join(MODES)}")
    if filters is not None:
        if not isinstance(filters, dict):
            raise UserError("filters must be a mapping of field -> value", fix=f"fields: {', '.join(FILTER_KEYS)}")
        unknown = sorted(set(filters) - set(FILTER_KEYS))
        if unknown:
            raise UserError(f"unknown filter field(s): {', '.join(unknown)}", fix=f"use: {', '.join(FILTER_KEYS)}")


def _where(filters: dict | None, release: int) -> tuple[sql.Composable, list]:
    visible, params = store.visible(release)
    if not filters:
        return visible, params
    clauses: list[sql.Composable] = [visible]
    for key in sorted(filters or {}):
        value = filters[key]
        if key == "doc_id_prefix":
            clauses.append(sql.SQL("starts_with(doc_id, %s)"))
            params.append(str(value))
        elif key == "format":
            clauses.append(sql.SQL("metadata->>'format' = %s"))
            params.append(str(value))
        elif isinstance(value, (list, tuple, set)):
            clauses.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(key)))
            params.append([str(v) for v in value])
        else:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(key)))
            params.append(str(value))
    return sql.SQL(" AND ").join(clauses), params


def embedder_for(settings: Settings, space: Space):
    """The embedding model of ``space``: the configured one when its fingerprint matches, else the space's own."""
    from pathlib import Path

    from tandem.knowledge.embedding import get_embedder, model_info
    from tandem.models import embedding_model_path

    wanted = space.spec.get("model", {})
    candidates = [embedding_model_path(settings.embed_model)]
    if space.spec.get("model_ref"):
        candidates.append(space.spec["model_ref"])
    backend = str(space.spec.get("backend", "torch")).split("/", 1)[0]  # the runtime the space was built with
    for ref in candidates:
        if Path(ref).is_dir() or not ref.startswith("/"):
            info = model_info(ref)
            if info.weights_sha256 == wanted.get("weights_sha256") and info.config_sha256 == wanted.get("config_sha256"):
                return get_embedder(ref, settings.torch_threads, backend, settings.models_dir)
    raise ServiceUnavailable(
        f"the live index (space {space.space_no}) was embedded with a model that is not available here "
        f"(weights sha256 {str(wanted.get('weights_sha256'))[:12]}...)",
        fix="set TANDEM_EMBED_MODEL to that model, or rebuild the index with the configured model (`tandem reindex`)")


def fuse(vector_ids: list[str], keyword_ids: list[str], fusion: str = "weighted-rrf") -> dict[str, float]:
    """Fused scores of the two ranked lists (see ``FUSIONS``)."""
    fused: dict[str, float] = {}
    weights = {"keyword": 1.0 if fusion == "rrf" else KEYWORD_WEIGHT, "vector": 1.0}
    for name, ids in (("vector", vector_ids), ("keyword", keyword_ids)):
        for rank, cid in enumerate(ids, start=1):
            fused[cid] = fused.get(cid, 0.0) + weights[name] / (RRF_K + rank)
    if fusion != "rrf" and vector_ids:
        fused[vector_ids[0]] += 1.0 / (RRF_K + 1)
    return fused


def search_space(conn: psycopg.Connection, table: str, query: str, vector, *, release: int, k: int,
                 mode: str = "hybrid", filters: dict | None = None, ef_search: int = 64,
                 candidates: int | None = None, fusion: str = "weighted-rrf") -> list[Hit]:
    """Search release ``release`` of one chunk table with an already computed query vector (used by
    ``search`` and the canary). About 65 lines: the hybrid query's SQL (vector and text candidates, fused)
    reads as one statement."""
    t = ident(table)
    n_cand = candidates or max(20, 4 * k)
    where, wparams = _where(filters, release)
    ranked: list[list[str]] = []
    own_score: dict[str, float] = {}
    # one round trip; the iterative scan skips rows of other releases (and filtered-out rows) without losing
    # candidates
    conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                 (str(max(ef_search, n_cand)),))
    if mode in ("hybrid", "vector"):
        rows = conn.execute(sql.SQL("""
            SELECT chunk_id, embedding <=> %s AS dist FROM {t} WHERE {w} ORDER BY embedding <=> %s LIMIT %s
            """).format(t=t, w=where), [vector, *wparams, vector, n_cand]).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))  # relaxed_order may return slightly out of order: order exactly
        ranked.append([r[0] for r in rows])
        if mode == "vector":
            own_score = {r[0]: 1.0 - float(r[1]) for r in rows}
    if mode in ("hybrid", "keyword"):
        rows = conn.execute(sql.SQL("""
            SELECT chunk_id, ts_rank_cd(tsv, q) AS rank FROM {t}, websearch_to_tsquery('english', %s) q
            WHERE tsv @@ q AND {w} ORDER BY rank DESC, chunk_id LIMIT %s
            """).format(t=t, w=where), [query, *wparams, n_cand]).fetchall()
        if len(rows) < n_cand:  # too few chunks have every word: fill up with any-word matches, ranked within
            # a bounded pool (ranking every chunk that shares one common word would cost O(corpus) per query)
            seen = [r[0] for r in rows]
            more = conn.execute(sql.SQL("""
                SELECT chunk_id, ts_rank_cd(tsv, q) AS rank FROM (
                    SELECT chunk_id, tsv, q FROM {t},
                        CAST(NULLIF(replace(plainto_tsquery('english', %s)::text, ' & ', ' | '), '') AS tsquery) q
                    WHERE tsv @@ q AND NOT (chunk_id = ANY(%s)) AND {w} LIMIT %s) pool
                ORDER BY rank DESC, chunk_id LIMIT %s
                """).format(t=t, w=where), [query, seen, *wparams, OR_POOL, n_cand - len(rows)]).fetchall()
            rows += more
        ranked.append([r[0] for r in rows])
        if mode == "keyword":
            own_score = {r[0]: float(r[1]) for r in rows}
    if mode == "hybrid":
        top = sorted(fuse(ranked[0], ranked[1], fusion).items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    else:  # one list: its own order (keyword: all-words matches first, then any-word matches)
        top = [(cid, own_score[cid]) for cid in ranked[0][:k]]
    if not top:
        return []
    visible, vparams = store.visible(release)
    rows = conn.execute(sql.SQL("""
        SELECT chunk_id, doc_id, title, uri, heading_path, text, 1 - (embedding <=> %s),
               coalesce(metadata->>'location', '') FROM {t}
        WHERE chunk_id = ANY(%s) AND {v}""").format(t=t, v=visible),
        [vector, [cid for cid, _ in top], *vparams]).fetchall()
    by_id = {r[0]: r for r in rows}
    hits = []
    for cid, score in top:
        r = by_id.get(cid)
        if r is None:
            continue
        hits.append(Hit(doc_id=r[1], chunk_id=cid, title=r[2], uri=r[3], heading_path=r[4], text=r[5],
                        score=float(score), vector_similarity=float(r[6]), location=r[7]))
    return hits


def search(settings: Settings, query: str, k: int = 5, filters: dict | None = None, mode: str = "hybrid",
           at: Space | None = None) -> list[Hit]:
    """The top ``k`` chunks of the published release for ``query`` (of ``at``, a ``pin``, when given).
    Raises ServiceUnavailable when nothing is indexed."""
    _validate(query, k, mode, filters)
    conn = _conn(settings.db_url)
    try:
        space = at or pin(settings)
        if space is None:
            raise ServiceUnavailable(f"the knowledge index {settings.index_name!r} is empty (nothing indexed yet)",
                                     fix="run `tandem reindex` (or the knowledge_reindex DAG) first")
        vector = embedder_for(settings, space).encode([query])[0]
        return search_space(conn, space.table, query, vector, release=space.index_version, k=k, mode=mode,
                            filters=filters, ef_search=settings.hnsw_ef_search, fusion=settings.retrieval_fusion)
    finally:
        conn.rollback()  # read-only: end the transaction (drops the SET LOCALs)
