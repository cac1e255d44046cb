"""The retrieval canary: a versioned golden set (JSONL lines ``{"query": str, "expected_doc_ids": [str]}``)
scored with hit@k and MRR (documents ranked by their best chunk, hybrid search) after each run.

The run fails, and its asset is not emitted, when hit@k or MRR drops more than ``canary_max_drop`` below the
baseline: the last run whose canary passed with the same golden set (same sha256) and the same k. A missing
or empty golden file skips the canary, and the summary says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import psycopg
from psycopg import sql

from tandem.db import ident
from tandem.errors import UserError
from tandem.knowledge.store import Names

log = logging.getLogger(__name__)


def load_golden(path: str) -> tuple[list[dict], str | None, str | None]:
    """(items, sha256 of the file, reason it is skipped or None). Raises UserError for a malformed file."""
    p = Path(path).expanduser() if path else None
    if p is None or not p.exists():
        return [], None, f"golden set {path or '(not configured)'} not found: canary skipped"
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    items = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"golden set {p} is not UTF-8", fix="re-save it as UTF-8 JSONL") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UserError(f"golden set {p} line {lineno}: invalid JSON ({exc})",
                            fix='each line must be {"query": "...", "expected_doc_ids": ["source/path.md"]}') from None
        if not isinstance(item, dict) or not isinstance(item.get("query"), str) or not item["query"].strip() \
                or not isinstance(item.get("expected_doc_ids"), list) or not item["expected_doc_ids"] \
                or not all(isinstance(d, str) for d in item["expected_doc_ids"]):
            raise UserError(f"golden set {p} line {lineno}: needs a non-empty \"query\" string and a non-empty "
                            "\"expected_doc_ids\" list of strings",
                            fix='write it as {"query": "...", "expected_doc_ids": ["source/path.md"]}')
        items.append({"query": item["query"], "expected_doc_ids": item["expected_doc_ids"]})
    if not items:
        return [], digest, f"golden set {p} is empty: canary skipped"
    return items, digest, None


def evaluate(conn: psycopg.Connection, table: str, embedder, items: list[dict], k: int, ef_search: int) -> dict:
    """hit@k and MRR@k over the golden items against one chunk table."""
    from tandem.knowledge.search import search_space

    vectors = embedder.encode([it["query"] for it in items])
    hits = 0
    rr_sum = 0.0
    misses = []
    for item, vector in zip(items, vectors):
        chunk_hits = search_space(conn, table, item["query"], vector, k=k * 4, mode="hybrid", ef_search=ef_search)
        conn.rollback()
        ranked_docs: list[str] = []
        for h in chunk_hits:
            if h.doc_id not in ranked_docs:
                ranked_docs.append(h.doc_id)
        ranked_docs = ranked_docs[:k]
        expected = set(item["expected_doc_ids"])
        rank = next((i for i, d in enumerate(ranked_docs, start=1) if d in expected), None)
        if rank is not None:
            hits += 1
            rr_sum += 1.0 / rank
        else:
            misses.append(item["query"])
    total = len(items)
    return {"hit_at_k": round(hits / total, 4), "mrr": round(rr_sum / total, 4), "k": k, "queries": total,
            "misses": misses[:20]}


def baseline(conn: psycopg.Connection, n: Names, golden_sha: str, k: int) -> dict | None:
    """The canary of the last successful run with this golden set and k that measured or carried metrics."""
    row = conn.execute(sql.SQL("""
        SELECT run_id, canary FROM {r}
        WHERE status = 'succeeded' AND canary->>'golden_sha256' = %s AND (canary->>'k')::int = %s
          AND canary->>'status' IN ('passed', 'baseline', 'unchanged')
        ORDER BY finished_at DESC LIMIT 1""").format(r=ident(n.runs)), (golden_sha, k)).fetchone()
    if row is None:
        return None
    return {"run_id": row[0], **row[1]}


def last_measured_is_good(conn: psycopg.Connection, n: Names, golden_sha: str, k: int) -> bool:
    """True when the most recent canary of this index (any status) passed with this golden set and k: only
    then may a run that changed nothing carry the metrics over instead of measuring."""
    row = conn.execute(sql.SQL("""
        SELECT canary FROM {r} WHERE canary IS NOT NULL AND finished_at IS NOT NULL
        ORDER BY finished_at DESC LIMIT 1""").format(r=ident(n.runs))).fetchone()
    if row is None:
        return False
    c = row[0]
    return (c.get("status") in ("passed", "baseline", "unchanged") and c.get("golden_sha256") == golden_sha
            and c.get("k") == k)


def judge(result: dict, base: dict | None, max_drop: float) -> dict:
    """Add status/baseline to ``result``: ``baseline`` (nothing to compare), ``passed`` or ``failed``."""
    if base is None:
        return {**result, "status": "baseline", "reason": "no earlier canary with this golden set: recorded as baseline"}
    drops = {"hit_at_k": round(base["hit_at_k"] - result["hit_at_k"], 4), "mrr": round(base["mrr"] - result["mrr"], 4)}
    failed = [m for m, d in drops.items() if d > max_drop + 1e-9]
    out = {**result, "baseline": {"run_id": base["run_id"], "hit_at_k": base["hit_at_k"], "mrr": base["mrr"]},
           "drop": drops, "max_drop": max_drop}
    if failed:
        return {**out, "status": "failed",
                "reason": "; ".join(f"{m} {base[m]:.3f} -> {result[m]:.3f} (drop {drops[m]:.3f} > {max_drop})"
                                    for m in failed)}
    return {**out, "status": "passed", "reason": "within the allowed drop"}
