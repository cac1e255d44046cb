"""Change detection in SQL set operations.

The scan's rows (doc id, uri, content hash or error) are streamed with COPY into a temporary table and joined
against the manifest of the target space. No per-document queries: the cost is a few hash joins, so it
stays fast at a million documents. The scan is staged in chunks of ``STAGE_ROWS`` rows, each its own short
transaction: no transaction stays open while the sources are read.

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


STAGE_ROWS = 1000


def stage(conn: psycopg.Connection, rows: Iterable[ScanRow], chunk_rows: int = STAGE_ROWS) -> int:
    """COPY the scan into a session temporary table, ``chunk_rows`` rows per transaction (the connection must
    not be inside a transaction block; ``drop_staging`` removes the tables). Returns the row count."""
    drop_staging(conn)
    t = ident(SCAN_TABLE)
    conn.execute(sql.SQL("""
        CREATE TEMP TABLE {t} (
            doc_id text PRIMARY KEY, source text NOT NULL, uri text NOT NULL, title text,
            content_hash text NOT NULL, error text
        )""").format(t=t))
    conn.commit()
    count = 0
    pending: list[ScanRow] = []
    for row in rows:
        pending.append(row)
        if len(pending) >= chunk_rows:
            count += _copy(conn, pending)
            pending = []
    count += _copy(conn, pending)
    conn.execute(sql.SQL("ANALYZE {t}").format(t=t))
    conn.commit()
    return count


def _copy(conn: psycopg.Connection, rows: list[ScanRow]) -> int:
    with conn.cursor().copy(sql.SQL("COPY {t} (doc_id, source, uri, title, content_hash, error) FROM STDIN")
                            .format(t=ident(SCAN_TABLE))) as copy:
        for row in rows:
            copy.write_row((row.doc_id, row.source, row.uri, row.title, row.content_hash, row.error))
    conn.commit()
    return len(rows)


def drop_staging(conn: psycopg.Connection) -> None:
    """Drop this session's scan and class tables (own transaction)."""
    for table in (SCAN_TABLE, CLASS_TABLE):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=sql.Identifier("pg_temp", table)))
    conn.commit()


CLASS_TABLE = "kn_class"


def classify(conn: psycopg.Connection, n: Names, space_no: int | None, full: bool,
             force: list[str] | None = None) -> None:
    """Classify the staged scan against the manifest of ``space_no`` once, into a temporary table: one hash
    join of the scan and the manifest; every later figure reads that table. ``force``: documents to rewrite
    (``verify --repair``) whatever the manifest says, or to delete when the sources no longer have them."""
    c, scan = ident(CLASS_TABLE), ident(SCAN_TABLE)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=sql.Identifier("pg_temp", CLASS_TABLE)))
    if space_no is None or not store.exists(conn, n.manifest):
        conn.execute(sql.SQL("""
            CREATE TEMP TABLE {c} AS
            SELECT doc_id, source, uri, error, content_hash, false AS indexed, NULL::text AS m_status,
                   NULL::text AS m_failed_hash, CASE WHEN error IS NULL THEN 'new' ELSE 'failed' END AS class
            FROM {scan}""").format(c=c, scan=scan))
    else:  # unchanged documents (the bulk of a nightly run) are counted, not materialised
        conn.execute(sql.SQL("""
            CREATE TEMP TABLE {c} AS
            SELECT * FROM (
            SELECT s.doc_id, s.source, s.uri, s.error, s.content_hash, m.content_hash IS NOT NULL AS indexed,
                   m.status AS m_status, m.failed_hash AS m_failed_hash,
                   CASE
                     WHEN NOT %(full)s AND m.status = 'quarantined' AND m.failed_hash = s.content_hash THEN 'quarantined'
                     WHEN s.error IS NOT NULL THEN 'failed'
                     WHEN m.content_hash IS NULL THEN 'new'
                     WHEN m.content_hash = s.content_hash AND NOT %(full)s AND NOT s.doc_id = ANY(%(force)s::text[])
                       THEN 'unchanged'
                     ELSE 'changed'
                   END AS class
            FROM {scan} s LEFT JOIN {m} m ON m.space_no = %(space)s AND m.doc_id = s.doc_id
            UNION ALL
            SELECT m.doc_id, m.source, m.uri, NULL, m.content_hash, m.content_hash IS NOT NULL, m.status,
                   m.failed_hash, 'deleted'
            FROM {m} m
            WHERE m.space_no = %(space)s AND NOT EXISTS (SELECT 1 FROM {scan} s WHERE s.doc_id = m.doc_id)
            UNION ALL  -- forced documents known to neither the sources nor the manifest: stray chunks to remove
            SELECT f.doc_id, '', '', NULL, NULL, false, 'indexed', NULL, 'deleted'
            FROM unnest(%(force)s::text[]) f(doc_id)
            WHERE NOT EXISTS (SELECT 1 FROM {scan} s WHERE s.doc_id = f.doc_id)
              AND NOT EXISTS (SELECT 1 FROM {m} m WHERE m.space_no = %(space)s AND m.doc_id = f.doc_id)
            ) x WHERE class <> 'unchanged' OR m_status <> 'indexed'
            """).format(c=c, scan=scan, m=ident(n.manifest)), {"space": space_no, "full": full, "force": list(force or [])})
    conn.execute(sql.SQL("ANALYZE {c}").format(c=c))


def counts(conn: psycopg.Connection, staged: int) -> dict:
    """Counts per class, plus the delete-brake figures (indexed docs deleted / indexed docs). ``staged`` is the
    number of scan rows: the unchanged documents are those not in the class table."""
    out: dict = {c: 0 for c in CLASSES}
    indexed_other = 0
    for cls, cnt, indexed in conn.execute(sql.SQL(
            "SELECT class, count(*), count(*) FILTER (WHERE indexed) FROM {c} GROUP BY class")
            .format(c=ident(CLASS_TABLE))):
        out[cls] = cnt
        if cls != "unchanged":
            indexed_other += indexed
        if cls == "deleted":
            out["indexed_deleted"] = indexed
    out["unchanged"] = staged - sum(out[c] for c in ("new", "changed", "failed", "quarantined"))
    out["indexed_total"] = out["unchanged"] + indexed_other
    out.setdefault("indexed_deleted", 0)
    return out


def ids_by_class(conn: psycopg.Connection, n: Names, space_no: int | None, limit_unchanged: int = 100) -> dict:
    """Document ids per class (sorted), for dry runs. Unchanged ids are capped at ``limit_unchanged``."""
    out: dict[str, list[str]] = {c: [] for c in CLASSES}
    for cls, doc_id in conn.execute(sql.SQL("SELECT class, doc_id FROM {c} WHERE class <> 'unchanged' "
                                            "ORDER BY class, doc_id").format(c=ident(CLASS_TABLE))):
        out[cls].append(doc_id)
    if space_no is not None and store.exists(conn, n.manifest):
        out["unchanged"] = [r[0] for r in conn.execute(sql.SQL("""
            SELECT s.doc_id FROM {scan} s JOIN {m} m ON m.space_no = %s AND m.doc_id = s.doc_id
            WHERE m.content_hash = s.content_hash AND s.error IS NULL
              AND NOT EXISTS (SELECT 1 FROM {c} c WHERE c.doc_id = s.doc_id AND c.class <> 'unchanged')
            ORDER BY s.doc_id LIMIT %s""").format(scan=ident(SCAN_TABLE), m=ident(n.manifest), c=ident(CLASS_TABLE)),
            (space_no, limit_unchanged))]
    return out


def failures(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(doc_id, error) of the scan rows that failed to read or extract."""
    return conn.execute(sql.SQL("SELECT doc_id, error FROM {c} WHERE class = 'failed' ORDER BY doc_id")
                        .format(c=ident(CLASS_TABLE))).fetchall()


def record_plan(conn: psycopg.Connection, n: Names, run_id: str, space_no: int, batch_docs: int,
                max_attempts: int) -> None:
    """Persist the plan (new/changed in numbered batches, deleted without a batch), record scan failures in
    the manifest (attempts, quarantine), and reset documents whose content went back to the indexed one."""
    params = {"space": space_no, "run": run_id, "batch": batch_docs, "max": max_attempts}
    c = ident(CLASS_TABLE)
    conn.execute(sql.SQL("""
        INSERT INTO {rd} (run_id, doc_id, class, uri, source, batch_no, planned_hash)
        SELECT %(run)s, doc_id, class, uri, source,
               CASE WHEN class IN ('new', 'changed')
                    THEN ((row_number() OVER (PARTITION BY class IN ('new', 'changed') ORDER BY doc_id)) - 1) / %(batch)s
               END,
               CASE WHEN class IN ('new', 'changed') THEN content_hash END
        FROM {c} WHERE class IN ('new', 'changed', 'deleted', 'failed', 'quarantined')
        """).format(rd=ident(n.run_docs), c=c), params)
    # scan failures: count the attempt against this content; quarantine at max_attempts
    conn.execute(sql.SQL("""
        INSERT INTO {m} AS m (space_no, doc_id, source, uri, status, attempts, last_error, failed_hash, updated_at)
        SELECT %(space)s, doc_id, source, uri,
               CASE WHEN 1 >= %(max)s THEN 'quarantined' ELSE 'failed' END, 1, error, content_hash, now()
        FROM {c} WHERE class = 'failed'
        ON CONFLICT (space_no, doc_id) DO UPDATE SET
            attempts = CASE WHEN m.failed_hash = EXCLUDED.failed_hash THEN m.attempts + 1 ELSE 1 END,
            status = CASE WHEN (CASE WHEN m.failed_hash = EXCLUDED.failed_hash THEN m.attempts + 1 ELSE 1 END) >= %(max)s
                          THEN 'quarantined' ELSE 'failed' END,
            last_error = EXCLUDED.last_error, failed_hash = EXCLUDED.failed_hash, updated_at = now()
        """).format(m=ident(n.manifest), c=c), params)
    # content back to the indexed version after failed attempts: the document is fine again
    conn.execute(sql.SQL("""
        UPDATE {m} m SET status = 'indexed', attempts = 0, last_error = NULL, failed_hash = NULL, updated_at = now()
        FROM {c} c
        WHERE c.class = 'unchanged' AND c.m_status <> 'indexed' AND m.space_no = %(space)s AND m.doc_id = c.doc_id
        """).format(m=ident(n.manifest), c=c), params)
