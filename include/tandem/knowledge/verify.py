"""``tandem index verify``: prove that the published index matches its sources.

Three truths are reconciled: a fresh scan of the sources (staged with COPY, as a reindex does), the manifest
of the live space, and the chunks of the published release. Each kind of drift is named:

- ``missing``: a readable document of the sources that is not indexed; ``extra``: an indexed document the
  sources no longer have;
- ``hash_mismatch``: the manifest's content hash is not the source's; ``chunk_hash_mismatch``: published
  chunks of another version than the manifest's (or of several versions);
- ``chunk_count_mismatch``: the manifest's chunk count is not the number of published chunks;
- ``orphan_chunks``: published chunks of a document the manifest does not hold; ``duplicate_chunk_ids``;
- ``bad_vectors``: NULL, zero, NaN/infinite vectors, or vectors of the wrong dimension;
- ``unpublished_visible``: rows a reader of the live view can see that the published release does not hold.

Documents that fail to read or index are reported as ``failing`` (they are known: the manifest records the
failure, and the previous version stays served) and are not drift. ``--repair`` re-indexes exactly the drifted
documents through the normal path (lease, candidate release, canary, publish) and verifies again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

from psycopg import sql

from tandem import db
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import UserError
from tandem.knowledge import diff, releases, store
from tandem.knowledge.progress import Progress

log = logging.getLogger(__name__)

LISTED = 100  # entries listed per kind of drift (the totals count all)
DOC_KINDS = ("missing", "extra", "hash_mismatch", "chunk_hash_mismatch", "chunk_count_mismatch", "orphan_chunks",
             "duplicate_chunk_ids", "bad_vectors")
KINDS = DOC_KINDS + ("unpublished_visible",)


def verify(settings: Settings, *, repair: bool = False, progress: bool = False, sources=None) -> dict:
    """The report (``ok``, counts, each kind of drift, ``failing``); with ``repair``, the repair run's summary
    and the report after it. Raises UserError when nothing was published yet."""
    report = check(settings, progress=progress, sources=sources)
    if repair and not report["ok"]:
        report = _repair(settings, report, progress=progress, sources=sources)
    return report


def check(settings: Settings, *, progress: bool = False, sources=None) -> dict:
    from tandem.knowledge import known_sources, scan, sources as src

    started = time.monotonic()
    started_at = dt.datetime.now(dt.timezone.utc)
    n = store.names(settings.index_name)
    specs, sources_from = known_sources.resolve(settings, sources)
    source_list = src.parse_sources(specs)
    with db.connection(settings.db_url) as conn:
        now = releases.live_release(conn, n) if store.exists(conn, n.spaces) else None
        conn.commit()
        if now is None:
            raise UserError(f"index {n.index!r} has no published release to verify", fix="run `tandem reindex` first")
        space, release = now
        try:
            with Progress("verify scan", None, bar=progress) as pr:
                scanned = diff.stage(conn, scan.scan(source_list, settings.include_globs, settings.exclude_globs,
                                                     settings.max_file_bytes, progress=pr))
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for every check
            findings = _findings(conn, n, space, release)
            failing = _failing(conn, n, space.space_no)
            totals = _totals(conn, n, space, release)
            conn.commit()
        finally:
            diff.drop_staging(conn)
        report = {
            "index": n.index, "index_version": release, "space": space.space_no,
            "ok": not any(findings[k]["count"] for k in KINDS),
            "sources": [f"{s.name}={s.root}" for s in source_list], "sources_from": sources_from,
            "scanned": scanned, **totals, "drift": findings, "drifted_documents": _drifted_docs(findings),
            "failing": failing, "seconds": round(time.monotonic() - started, 3),
        }
        _record(conn, n, report, started_at)
    log.info("verify %s release %s: %s (%d documents scanned, %d drifted) in %.1fs", n.index, release,
             "consistent" if report["ok"] else "DRIFT", scanned, len(report["drifted_documents"]), report["seconds"])
    return report


def _q(conn, query: sql.Composable, params) -> list[tuple]:
    return conn.execute(query, params).fetchall()


def _findings(conn, n, space, release: int) -> dict:
    t, m, scan = ident(space.table), ident(n.manifest), ident(diff.SCAN_TABLE)
    vis, vp = store.visible(release)
    # published chunks per document, once
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {p}").format(p=sql.Identifier("pg_temp", "kn_published")))
    conn.execute(sql.SQL("""
        CREATE TEMP TABLE kn_published ON COMMIT DROP AS
        SELECT doc_id, count(*) AS chunks, count(DISTINCT doc_hash) AS versions, min(doc_hash) AS doc_hash
        FROM {t} WHERE {v} GROUP BY doc_id""").format(t=t, v=vis), vp)
    known_failing = sql.SQL("(m.status IN ('failed', 'quarantined') AND m.failed_hash = s.content_hash)")
    sp = space.space_no
    out: dict[str, list] = {}
    out["missing"] = [{"doc_id": d} for (d,) in _q(conn, sql.SQL("""
        SELECT s.doc_id FROM {scan} s LEFT JOIN {m} m ON m.space_no = %s AND m.doc_id = s.doc_id
        WHERE s.error IS NULL AND m.content_hash IS NULL AND NOT coalesce({kf}, false) ORDER BY 1""")
        .format(scan=scan, m=m, kf=known_failing), (sp,))]
    out["extra"] = [{"doc_id": d} for (d,) in _q(conn, sql.SQL("""
        SELECT m.doc_id FROM {m} m WHERE m.space_no = %s AND m.content_hash IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM {scan} s WHERE s.doc_id = m.doc_id) ORDER BY 1""")
        .format(scan=scan, m=m), (sp,))]
    out["hash_mismatch"] = [{"doc_id": d, "manifest": mh, "source": sh} for d, mh, sh in _q(conn, sql.SQL("""
        SELECT s.doc_id, m.content_hash, s.content_hash FROM {scan} s JOIN {m} m ON m.space_no = %s
          AND m.doc_id = s.doc_id
        WHERE s.error IS NULL AND m.content_hash IS NOT NULL AND m.content_hash <> s.content_hash
          AND NOT {kf} ORDER BY 1""").format(scan=scan, m=m, kf=known_failing), (sp,))]
    out["chunk_hash_mismatch"] = [{"doc_id": d, "manifest": mh, "chunks": ph, "versions": v} for d, mh, ph, v in _q(
        conn, sql.SQL("""
        SELECT m.doc_id, m.content_hash, p.doc_hash, p.versions FROM {m} m JOIN kn_published p ON p.doc_id = m.doc_id
        WHERE m.space_no = %s AND m.content_hash IS NOT NULL AND (p.versions > 1 OR p.doc_hash <> m.content_hash)
        ORDER BY 1""").format(m=m), (sp,))]
    out["chunk_count_mismatch"] = [{"doc_id": d, "manifest": mc, "published": pc} for d, mc, pc in _q(conn, sql.SQL("""
        SELECT m.doc_id, m.chunk_count, coalesce(p.chunks, 0) FROM {m} m LEFT JOIN kn_published p ON p.doc_id = m.doc_id
        WHERE m.space_no = %s AND m.content_hash IS NOT NULL AND m.chunk_count <> coalesce(p.chunks, 0)
        ORDER BY 1""").format(m=m), (sp,))]
    out["orphan_chunks"] = [{"doc_id": d, "chunks": c} for d, c in _q(conn, sql.SQL("""
        SELECT p.doc_id, p.chunks FROM kn_published p WHERE NOT EXISTS (
            SELECT 1 FROM {m} m WHERE m.space_no = %s AND m.doc_id = p.doc_id AND m.content_hash IS NOT NULL)
        ORDER BY 1""").format(m=m), (sp,))]
    out["duplicate_chunk_ids"] = [{"chunk_id": c, "doc_id": d, "copies": k} for c, d, k in _q(conn, sql.SQL("""
        SELECT chunk_id, min(doc_id), count(*) FROM {t} WHERE {v} GROUP BY chunk_id HAVING count(*) > 1
        ORDER BY 1""").format(t=t, v=vis), vp)]
    out["bad_vectors"] = [{"chunk_id": c, "doc_id": d, "problem": p} for c, d, p in _q(conn, sql.SQL("""
        SELECT chunk_id, doc_id, problem FROM (
            SELECT chunk_id, doc_id, CASE
                WHEN embedding IS NULL THEN 'null'
                WHEN vector_dims(embedding) <> %s THEN 'wrong dimension'
                WHEN vector_norm(embedding) IN ('NaN'::float8, 'Infinity'::float8) THEN 'NaN or infinite'
                WHEN vector_norm(embedding) = 0 THEN 'zero' END AS problem
            FROM {t} WHERE {v}) x WHERE problem IS NOT NULL ORDER BY 1""").format(t=t, v=vis), [space.dim, *vp])]
    result = {k: {"count": len(v), "items": v[:LISTED]} for k, v in out.items()}
    result["unpublished_visible"] = _unpublished_visible(conn, n, space, release)
    return result


def _unpublished_visible(conn, n, space, release: int) -> dict:
    """Rows a reader of the live view sees that are not rows of the published release of the live table."""
    if not store.exists(conn, n.live_view):
        return {"count": 1, "items": [{"problem": f"the live view {n.live_view} is missing"}]}
    vis, vp = store.visible(release)
    rows = _q(conn, sql.SQL("""
        SELECT v.chunk_id, v.doc_id, v.rel_from, v.rel_to FROM {view} v WHERE NOT EXISTS (
            SELECT 1 FROM {t} c WHERE c.chunk_id = v.chunk_id AND c.rel_from = v.rel_from AND {vis})
        ORDER BY 1""").format(view=ident(n.live_view), t=ident(space.table), vis=vis), vp)
    return {"count": len(rows), "items": [{"chunk_id": c, "doc_id": d, "rel_from": f, "rel_to": t}
                                          for c, d, f, t in rows[:LISTED]]}


def _failing(conn, n, space_no: int) -> list[dict]:
    scan, m = ident(diff.SCAN_TABLE), ident(n.manifest)
    rows = _q(conn, sql.SQL("""
        SELECT s.doc_id, coalesce(s.error, m.last_error), m.status FROM {scan} s
        LEFT JOIN {m} m ON m.space_no = %s AND m.doc_id = s.doc_id
        WHERE s.error IS NOT NULL OR (m.status IN ('failed', 'quarantined') AND m.failed_hash = s.content_hash)
        ORDER BY 1""").format(scan=scan, m=m), (space_no,))
    return [{"doc_id": d, "reason": r or "", "status": st or "failed"} for d, r, st in rows[:LISTED]]


def _totals(conn, n, space, release: int) -> dict:
    vis, vp = store.visible(release)
    indexed = conn.execute(sql.SQL("SELECT count(*) FROM {m} WHERE space_no = %s AND content_hash IS NOT NULL")
                           .format(m=ident(n.manifest)), (space.space_no,)).fetchone()[0]
    chunks = conn.execute(sql.SQL("SELECT count(*) FROM {t} WHERE {v}").format(t=ident(space.table), v=vis),
                          vp).fetchone()[0]
    return {"indexed_documents": indexed, "published_chunks": chunks}


def _drifted_docs(findings: dict) -> list[str]:
    docs = {item["doc_id"] for kind in DOC_KINDS for item in findings[kind]["items"] if item.get("doc_id")}
    return sorted(docs)


def _record(conn, n, report: dict, started_at) -> None:
    with conn.transaction():
        row = conn.execute(sql.SQL("""
            INSERT INTO {c} (index_version, ok, report, started_at) VALUES (%s, %s, %s, %s) RETURNING check_id""")
            .format(c=ident(n.checks)), (report["index_version"], report["ok"], json.dumps(report, default=str),
                                         started_at)).fetchone()
    report["check_id"] = row[0]


def _repair(settings: Settings, report: dict, *, progress: bool, sources=None) -> dict:
    """Re-index the drifted documents as a new release (the normal path), re-point a wrong live view, and
    verify again."""
    from tandem.knowledge import reindex

    n = store.names(settings.index_name)
    actions = []
    if report["drift"]["unpublished_visible"]["count"]:
        with db.connection(settings.db_url) as conn:
            space, _release = releases.live_release(conn, n)
            conn.commit()  # end the read: the block below must be a transaction of its own, not a savepoint
            with conn.transaction():
                store.point_live_view(conn, n, space.space_no, space.table)
        actions.append("re-created the live view over the published release")
    docs = report["drifted_documents"]
    if len(docs) < sum(report["drift"][k]["count"] for k in DOC_KINDS if k != "duplicate_chunk_ids") and docs:
        log.warning("more drift than listed: repairing the %d listed documents; run verify --repair again", len(docs))
    summary = None
    if docs:
        summary = reindex.run(settings, sources=sources, progress=progress, force=docs)
        actions.append(f"re-indexed {len(docs)} drifted documents as release {summary['index_version']}")
    after = check(settings, progress=progress, sources=sources)
    if summary is not None:
        with db.connection(settings.db_url) as conn:
            with conn.transaction():
                conn.execute(sql.SQL("UPDATE {c} SET repair_index_version = %s WHERE check_id = %s")
                             .format(c=ident(n.checks)), (summary["release"]["index_version"], report["check_id"]))
    return {**after, "repaired": {"before": {k: report["drift"][k]["count"] for k in KINDS},
                                  "documents": docs, "actions": actions, "run": summary}}


def last_check(conn, n) -> dict | None:
    """The newest verification of this index (for the status page and ``tandem index status``)."""
    if not store.exists(conn, n.checks):
        return None
    row = conn.execute(sql.SQL("""
        SELECT check_id, index_version, ok, report, repair_index_version, started_at, finished_at FROM {c}
        ORDER BY check_id DESC LIMIT 1""").format(c=ident(n.checks))).fetchone()
    if row is None:
        return None
    check_id, release, ok, rep, repair_index_version, started, finished = row
    return {"check_id": check_id, "index_version": release, "ok": ok, "finished_at": str(finished),
            "seconds": rep.get("seconds"), "drift": {k: rep["drift"][k]["count"] for k in KINDS if k in rep["drift"]},
            "failing": len(rep.get("failing") or []), "repair_index_version": repair_index_version}


_FROM = {"given": "named by you", "configured": "TANDEM_SOURCES", "index": "the index's last published run",
         "default": "the default folder"}


def text(report: dict) -> str:
    """The report for a terminal."""
    head = (f"knowledge index {report['index']!r} release {report['index_version']}: "
            + ("CONSISTENT with its sources" if report["ok"] else "DRIFT found"))
    lines = [head, f"  scanned {report['scanned']} documents . indexed {report['indexed_documents']} . "
                   f"published chunks {report['published_chunks']} . {report['seconds']}s",
             f"  sources ({_FROM.get(report.get('sources_from'), 'given')}): {', '.join(report.get('sources') or [])}"]
    for kind in KINDS:
        found = report["drift"][kind]
        if not found["count"]:
            continue
        lines.append(f"  {kind.replace('_', ' ')}: {found['count']}")
        for item in found["items"][:20]:
            lines.append("    " + " ".join(f"{k}={v}" for k, v in item.items()))
        if found["count"] > 20:
            lines.append(f"    ... and {found['count'] - 20} more (--json lists {LISTED})")
    if report["failing"]:
        lines.append(f"  failing documents (known; their previous version stays served): {len(report['failing'])}")
        lines.extend(f"    {f['doc_id']}: {f['reason']}" for f in report["failing"][:20])
    rep = report.get("repaired")
    if rep:
        lines.append("  repair: " + ("; ".join(rep["actions"]) or "nothing to repair"))
    if not report["ok"]:
        lines.append("  fix: `tandem index verify --repair` re-indexes exactly the drifted documents as a new release")
    return "\n".join(lines)
