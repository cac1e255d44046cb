"""Change detection in SQL set operations.

The scan's rows (doc id, uri, content hash or error) are streamed with COPY into a temporary table and joined
against the manifest of the target space. No per-document queries: the cost is a few hash joins, so it
stays fast at a million documents.

Classes: ``new`` (no indexed version), ``changed`` (indexed with another hash, or ``--full``), ``unchanged``,
``deleted`` (in the manifest, gone from the sources), plus ``failed`` (could not be read/extracted now: the
previous version stays) and ``quarantined`` (failed ``max_attempts`` times with this same content: skipped).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import psycopg
from psycopg import sql

from tandem.db import ident
from tandem.knowledge import store
from tandem.knowledge.store import Names

CLASSES = ("new", "changed", "unchanged", "deleted", "failed", "quarantined")
SCAN_TABLE = "kn_scan"


@dataclasses.dataclass(frozen=True)
class ScanRow:
    doc_id: str
    source: str
    uri: str
    title: str | None
    content_hash: str  # sha256 of title + text; for an error, a marker of the failing content
    error: str | None = None


def stage(conn: psycopg.Connection, rows: Iterable[ScanRow]) -> int:
    """COPY the scan into a temporary table (dropped at commit). Returns the row count. Caller's transaction."""
    t = ident(SCAN_TABLE)
    conn.execute(sql.SQL("""
        CREATE TEMP TABLE {t} (
            doc_id text PRIMARY KEY, source text NOT NULL, uri text NOT NULL, title text,
            content_hash text NOT NULL, error text
        ) ON COMMIT DROP""").format(t=t))
    count = 0
    with conn.cursor().copy(sql.SQL("COPY {t} (doc_id, source, uri, title, content_hash, error) FROM STDIN")
                            .format(t=t)) as copy:
        for row in rows:
            copy.write_row((row.doc_id, row.source, row.uri, row.title, row.content_hash, row.error))
            count += 1
    conn.execute(sql.SQL("ANALYZE {t}").format(t=t))
    return count


def _classified(n: Names) -> sql.Composed:
    """SELECT doc_id, source, uri, class, error over the staged scan and the manifest of %(space)s."""
    return sql.SQL("""
        SELECT s.doc_id, s.source, s.uri,
               CASE
                 WHEN NOT %(full)s AND m.status = 'quarantined' AND m.failed_hash = s.content_hash THEN 'quarantined'
                 WHEN s.error IS NOT NULL THEN 'failed'
                 WHEN m.content_hash IS NULL THEN 'new'
                 WHEN m.content_hash = s.content_hash AND NOT %(full)s THEN 'unchanged'
                 ELSE 'changed'
               END AS class,
               s.error, s.content_hash
        FROM {scan} s LEFT JOIN {m} m ON m.space_no = %(space)s AND m.doc_id = s.doc_id
        UNION ALL
        SELECT m.doc_id, m.source, m.uri, 'deleted', NULL, m.content_hash
        FROM {m} m
        WHERE m.space_no = %(space)s AND NOT EXISTS (SELECT 1 FROM {scan} s WHERE s.doc_id = m.doc_id)
        """).format(scan=ident(SCAN_TABLE), m=ident(n.manifest))


def counts(conn: psycopg.Connection, n: Names, space_no: int | None, full: bool) -> dict:
    """Counts per class, plus the delete-brake figures (indexed docs deleted / indexed docs)."""
    if space_no is None or not store.exists(conn, n.manifest):
        total = conn.execute(sql.SQL("""
            SELECT count(*) FILTER (WHERE error IS NULL), count(*) FILTER (WHERE error IS NOT NULL) FROM {scan}
            """).format(scan=ident(SCAN_TABLE))).fetchone()
        out = {c: 0 for c in CLASSES}
        out.update(new=total[0], failed=total[1], indexed_total=0, indexed_deleted=0)
        return out
    rows = conn.execute(sql.SQL("SELECT class, count(*) FROM ({q}) c GROUP BY class").format(q=_classified(n)),
                        {"space": space_no, "full": full}).fetchall()
    out = {c: 0 for c in CLASSES}
    out.update({cls: cnt for cls, cnt in rows})
    brake = conn.execute(sql.SQL("""
        SELECT count(*) FILTER (WHERE m.content_hash IS NOT NULL),
               count(*) FILTER (WHERE m.content_hash IS NOT NULL
                                  AND NOT EXISTS (SELECT 1 FROM {scan} s WHERE s.doc_id = m.doc_id))
        FROM {m} m WHERE m.space_no = %s""").format(scan=ident(SCAN_TABLE), m=ident(n.manifest)),
        (space_no,)).fetchone()
    out["indexed_total"], out["indexed_deleted"] = brake
    return out


def ids_by_class(conn: psycopg.Connection, n: Names, space_no: int | None, full: bool,
                 limit_unchanged: int = 100) -> dict[str, list[str]]:
    """Document ids per class (sorted), for dry runs. Unchanged ids are capped at ``limit_unchanged``."""
    out: dict[str, list[str]] = {c: [] for c in CLASSES}
    if space_no is None or not store.exists(conn, n.manifest):
        for doc_id, error in conn.execute(sql.SQL("SELECT doc_id, error FROM {scan} ORDER BY doc_id")
                                          .format(scan=ident(SCAN_TABLE))):
            out["failed" if error else "new"].append(doc_id)
        return out
    q = sql.SQL("""
        SELECT class, doc_id FROM (
            SELECT c.class, c.doc_id, row_number() OVER (PARTITION BY c.class ORDER BY c.doc_id) AS r FROM ({q}) c
        ) x WHERE class <> 'unchanged' OR r <= %(limit)s ORDER BY class, doc_id""").format(q=_classified(n))
    for cls, doc_id in conn.execute(q, {"space": space_no, "full": full, "limit": limit_unchanged}):
        out[cls].append(doc_id)
    return out


def failures(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(doc_id, error) of the scan rows that failed to read or extract."""
    return conn.execute(sql.SQL("SELECT doc_id, error FROM {scan} WHERE error IS NOT NULL ORDER BY doc_id")
                        .format(scan=ident(SCAN_TABLE))).fetchall()


def record_plan(conn: psycopg.Connection, n: Names, run_id: str, space_no: int, full: bool, batch_docs: int,
                max_attempts: int) -> None:
    """Persist the plan (new/changed in numbered batches, deleted without a batch), record scan failures in
    the manifest (attempts, quarantine), and reset documents whose content went back to the indexed one."""
    params = {"space": space_no, "full": full, "run": run_id, "batch": batch_docs, "max": max_attempts}
    conn.execute(sql.SQL("""
        INSERT INTO {rd} (run_id, doc_id, class, uri, source, batch_no)
        SELECT %(run)s, doc_id, class, uri, source,
               CASE WHEN class IN ('new', 'changed')
                    THEN ((row_number() OVER (PARTITION BY class IN ('new', 'changed') ORDER BY doc_id)) - 1) / %(batch)s
               END
        FROM ({q}) c WHERE class IN ('new', 'changed', 'deleted', 'failed', 'quarantined')
        """).format(rd=ident(n.run_docs), q=_classified(n)), params)
    # scan failures: count the attempt against this content; quarantine at max_attempts
    conn.execute(sql.SQL("""
        INSERT INTO {m} AS m (space_no, doc_id, source, uri, status, attempts, last_error, failed_hash, updated_at)
        SELECT %(space)s, s.doc_id, s.source, s.uri,
               CASE WHEN 1 >= %(max)s THEN 'quarantined' ELSE 'failed' END, 1, s.error, s.content_hash, now()
        FROM {scan} s JOIN {rd} r ON r.run_id = %(run)s AND r.doc_id = s.doc_id AND r.class = 'failed'
        ON CONFLICT (space_no, doc_id) DO UPDATE SET
            attempts = CASE WHEN m.failed_hash = EXCLUDED.failed_hash THEN m.attempts + 1 ELSE 1 END,
            status = CASE WHEN (CASE WHEN m.failed_hash = EXCLUDED.failed_hash THEN m.attempts + 1 ELSE 1 END) >= %(max)s
                          THEN 'quarantined' ELSE 'failed' END,
            last_error = EXCLUDED.last_error, failed_hash = EXCLUDED.failed_hash, updated_at = now()
        """).format(m=ident(n.manifest), scan=ident(SCAN_TABLE), rd=ident(n.run_docs)), params)
    conn.execute(sql.SQL("""
        UPDATE {m} m SET status = 'indexed', attempts = 0, last_error = NULL, failed_hash = NULL, updated_at = now()
        FROM {scan} s
        WHERE m.space_no = %(space)s AND m.doc_id = s.doc_id AND s.error IS NULL AND m.status <> 'indexed'
          AND m.content_hash = s.content_hash
          AND NOT (m.status = 'quarantined' AND m.failed_hash = s.content_hash)
        """).format(m=ident(n.manifest), scan=ident(SCAN_TABLE)), params)
