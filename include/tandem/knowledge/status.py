"""What the knowledge index holds: release, counts, last run, quarantine, canary history, recent releases, last
verification (CLI and status page)."""

from __future__ import annotations

from psycopg import sql

from tandem import db
from tandem.config import Settings
from tandem.db import ident
from tandem.knowledge import lock, releases, spaces, store, verify


def _space_dict(space) -> dict | None:
    if space is None:
        return None
    return {"no": space.space_no, "index_version": space.index_version,
            "fingerprint": space.fingerprint, "table": space.table,
            "dim": space.dim, "status": space.status, "model": space.spec.get("model_ref"),
            "chunker": space.spec.get("chunker")}


def index_status(settings: Settings, history: int = 20) -> dict:
    """A JSON-able dict: ``index_version`` (None when nothing is indexed), ``documents``, ``chunks``,
    ``failed_documents``, ``live``/``previous``/``building`` spaces, ``last_run`` (time, status, summary),
    ``quarantined`` (doc id, reason, attempts, since), ``canary_history`` (newest first: run, time, status,
    hit@k, MRR, k), ``running`` (the lease holder, if a reindex is running)."""
    n = store.names(settings.index_name)
    out: dict = {"index": n.index, "index_version": None, "documents": 0, "chunks": 0,
                 "failed_documents": 0, "live": None, "previous": None, "building": None, "last_run": None,
                 "quarantined": [], "canary_history": [], "running": None, "releases": [], "last_verify": None}
    with db.connection(settings.db_url) as conn:
        if not store.exists(conn, n.spaces):
            return out
        live = spaces.live(conn, n)
        out["live"] = _space_dict(live)
        out["previous"] = _space_dict(spaces.by_status(conn, n, "previous"))
        out["building"] = _space_dict(spaces.by_status(conn, n, "building"))
        if live is not None and live.published:
            out["index_version"] = live.index_version
            out["chunks"] = conn.execute(sql.SQL("SELECT count(*) FROM {v}").format(v=ident(n.live_view))).fetchone()[0]
            docs, failed = conn.execute(sql.SQL("""
                SELECT count(*) FILTER (WHERE content_hash IS NOT NULL), count(*) FILTER (WHERE status = 'failed')
                FROM {m} WHERE space_no = %s""").format(m=ident(n.manifest)), (live.space_no,)).fetchone()
            out["documents"], out["failed_documents"] = docs, failed
            out["quarantined"] = [
                {"doc_id": d, "reason": e, "attempts": a, "since": str(t)}
                for d, e, a, t in conn.execute(sql.SQL("""
                    SELECT doc_id, last_error, attempts, updated_at FROM {m}
                    WHERE space_no = %s AND status = 'quarantined' ORDER BY doc_id""").format(m=ident(n.manifest)),
                    (live.space_no,))]
        row = conn.execute(sql.SQL("""
            SELECT run_id, status, mode, started_at, finished_at, summary FROM {r}
            WHERE status <> 'running' ORDER BY started_at DESC LIMIT 1""").format(r=ident(n.runs))).fetchone()
        if row is not None:
            out["last_run"] = {"run_id": row[0], "status": row[1], "mode": row[2], "started_at": str(row[3]),
                               "finished_at": str(row[4]) if row[4] else None, "summary": row[5]}
        for run_id, status, finished, canary in conn.execute(sql.SQL("""
                SELECT run_id, status, finished_at, canary FROM {r} WHERE canary IS NOT NULL
                ORDER BY started_at DESC LIMIT %s""").format(r=ident(n.runs)), (history,)):
            out["canary_history"].append({
                "run_id": run_id, "run_status": status, "finished_at": str(finished) if finished else None,
                "status": canary.get("status"), "hit_at_k": canary.get("hit_at_k"), "mrr": canary.get("mrr"),
                "k": canary.get("k"), "reason": canary.get("reason")})
        out["releases"] = releases.listing(conn, n, 10)
        out["last_verify"] = verify.last_check(conn, n)
        holder = lock.holder(conn, n)
        if holder is not None:
            out["running"] = {"owner": holder["owner"], "since": str(holder["acquired_at"]),
                              "heartbeat_at": str(holder["heartbeat_at"])}
    return out
