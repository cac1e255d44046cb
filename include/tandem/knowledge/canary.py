"""The retrieval canary: a versioned golden set (JSONL lines ``{"query": str, "expected_doc_ids": [str]}``)
scored with hit@k and MRR (documents ranked by their best chunk, hybrid search) after each run.

The candidate release is measured before it is published. The run fails, and nothing is published, when
hit@k or MRR drops more than ``canary_max_drop`` below the baseline (the newest published release measured
with the same golden set, same sha256, and the same k), or falls under the floor: the best value over the
newest ``canary_floor_releases`` published releases minus ``canary_floor_tolerance``. The floor catches a
slow decay that each single step would let through. A missing or empty golden file skips the canary, and
the summary says so.
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


def evaluate(conn: psycopg.Connection, table: str, embedder, items: list[dict], k: int, ef_search: int, *,
             release: int, fusion: str = "weighted-rrf") -> dict:
    """hit@k and MRR@k over the golden items against one release of one chunk table."""
    from tandem.knowledge.search import search_space

    vectors = embedder.encode([it["query"] for it in items])
    hits = 0
    rr_sum = 0.0
    misses = []
    for item, vector in zip(items, vectors):
        chunk_hits = search_space(conn, table, item["query"], vector, release=release, k=k * 4, mode="hybrid",
                                  ef_search=ef_search, fusion=fusion)
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


METRICS = ("hit_at_k", "mrr")


def reference(conn: psycopg.Connection, n: Names, golden_sha: str, k: int, floor_releases: int,
              floor_tolerance: float) -> dict | None:
    """The baseline (the newest published release measured with this golden set and k) and the floor (the
    best of the newest ``floor_releases`` such releases, minus ``floor_tolerance``), or None."""
    from tandem.knowledge import releases

    history = releases.canary_history(conn, n, golden_sha, k, floor_releases)
    if not history:
        return None
    newest = history[0]
    best = {m: max(float(h[m]) for h in history) for m in METRICS}
    return {"index_version": newest["index_version"], "run_id": newest.get("run_id"),
            **{m: float(newest[m]) for m in METRICS},
            "floor": {**{m: round(best[m] - floor_tolerance, 4) for m in METRICS}, "best": best,
                      "index_versions": [h["index_version"] for h in history], "tolerance": floor_tolerance}}


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


def judge(result: dict, ref: dict | None, max_drop: float) -> dict:
    """Add status and baseline to ``result``: ``baseline`` (nothing to compare), ``passed`` or ``failed``
    (a drop of more than ``max_drop`` below the baseline, or a value under the floor)."""
    if ref is None:
        return {**result, "status": "baseline", "reason": "no published release measured with this golden set: "
                                                          "recorded as baseline"}
    drops = {m: round(ref[m] - result[m], 4) for m in METRICS}
    floor = ref.get("floor") or {}
    out = {**result, "baseline": {"index_version": ref.get("index_version"), "run_id": ref.get("run_id"),
                                  **{m: ref[m] for m in METRICS}},
           "drop": drops, "max_drop": max_drop, "floor": {m: floor[m] for m in METRICS if m in floor}}
    reasons = [f"{m} {ref[m]:.3f} -> {result[m]:.3f} (drop {drops[m]:.3f} > {max_drop})"
               for m in METRICS if drops[m] > max_drop + 1e-9]
    reasons += [f"{m} {result[m]:.3f} is under the floor {floor[m]:.3f} (best {floor['best'][m]:.3f} of releases "
                f"{', '.join(map(str, floor['index_versions']))} minus {floor['tolerance']})"
                for m in METRICS if m in floor and result[m] < floor[m] - 1e-9]
    if reasons:
        return {**out, "status": "failed", "reason": "; ".join(reasons)}
    return {**out, "status": "passed", "reason": "within the allowed drop and above the floor"}
