"""Per-document atomic writes, failures with retry and quarantine, and deletes.

One transaction per document: check the lease, insert the new chunks into the candidate release (``rel_from
= R``), mark the document's current chunks as replaced by it (``rel_to = R``), and record what the document
became in the run's documents (applied to the manifest when the release is published; at once for a space
that was never published, so a crashed shadow build resumes). A failure anywhere rolls all of it back: the
previous version stays fully in place, and the manifest records the attempt (``failed``; ``quarantined``
after ``max_attempts`` failures of the same content). Readers of the published release see none of it.

Fault points (``tandem.faults``, no-ops unless a test installs a hook): ``doc_write`` inside a document's
transaction, after its new chunks were inserted, and ``doc_committed`` after each committed document.
"""

from __future__ import annotations

import dataclasses
import json

import psycopg
from psycopg import sql

from tandem import faults
from tandem.db import ident
from tandem.knowledge import lock, releases
from tandem.knowledge.chunking import Chunk
from tandem.knowledge.store import Names


def _require_idle(conn: psycopg.Connection) -> None:
    """The per-document transaction must be a real transaction, not a savepoint in someone else's."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("writer called inside an open transaction: commit or roll back first")


@dataclasses.dataclass
class DocWrite:
    doc_id: str
    source: str
    uri: str
    title: str
    content_hash: str
    fmt: str
    chunks: list[Chunk]
    vectors: object  # numpy array (len(chunks), dim)


def write_document(conn: psycopg.Connection, n: Names, *, table: str, space_no: int, owner: str, run_id: str,
                   doc: DocWrite, fingerprint: str, release: int, manifest_now: bool) -> None:
    t = ident(table)
    _require_idle(conn)
    with conn.transaction():
        lock.check(conn, n, owner)
        rel = doc.doc_id.split("/", 1)[1] if "/" in doc.doc_id else doc.doc_id
        metadata = {"format": doc.fmt, "path": rel}
        # a retried batch of the same run rewrites the document's candidate rows
        conn.execute(sql.SQL("DELETE FROM {t} WHERE doc_id = %s AND rel_from = %s").format(t=t), (doc.doc_id, release))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("""
                INSERT INTO {t} (chunk_id, rel_from, doc_id, ordinal, doc_hash, source, uri, title, heading_path,
                                 text, metadata, fingerprint, embedding)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""").format(t=t),
                [(c.chunk_id, release, doc.doc_id, c.ordinal, doc.content_hash, doc.source, doc.uri, c.title,
                  c.heading_path, c.text, json.dumps({**metadata, "location": c.location} if c.location else metadata),
                  fingerprint, vec)
                 for c, vec in zip(doc.chunks, doc.vectors)])
        faults.point("doc_write", doc_id=doc.doc_id)
        conn.execute(sql.SQL("UPDATE {t} SET rel_to = %s WHERE doc_id = %s AND rel_to IS NULL AND rel_from < %s")
                     .format(t=t), (release, doc.doc_id, release))
        conn.execute(sql.SQL("""
            UPDATE {rd} SET outcome = 'written', content_hash = %s, title = %s, chunk_count = %s
            WHERE run_id = %s AND doc_id = %s""").format(rd=ident(n.run_docs)),
            (doc.content_hash, doc.title, len(doc.chunks), run_id, doc.doc_id))
        if manifest_now:
            releases.apply_manifest(conn, n, space_no, run_id, release, doc_id=doc.doc_id)
    faults.point("doc_committed", doc_id=doc.doc_id)


def record_changed_during_run(conn: psycopg.Connection, n: Names, *, owner: str, run_id: str, doc_id: str) -> None:
    """The document's bytes differ from what the plan hashed: nothing is written for it in this run (its previous
    version, if any, stays), no failed attempt is counted, and the next run's plan sees the new content."""
    _require_idle(conn)
    with conn.transaction():
        lock.check(conn, n, owner)
        conn.execute(sql.SQL("UPDATE {rd} SET outcome = 'changed_during_run' WHERE run_id = %s AND doc_id = %s")
                     .format(rd=ident(n.run_docs)), (run_id, doc_id))


def record_failure(conn: psycopg.Connection, n: Names, *, space_no: int, owner: str, run_id: str, doc_id: str,
                   source: str, uri: str, failed_hash: str, error: str, max_attempts: int) -> tuple[str, int]:
    """Count a failed attempt (the previous version, if any, stays). Returns (status, attempts)."""
    _require_idle(conn)
    with conn.transaction():
        lock.check(conn, n, owner)
        row = conn.execute(sql.SQL("""
            INSERT INTO {m} AS m (space_no, doc_id, source, uri, status, attempts, last_error, failed_hash, updated_at)
            VALUES (%(space)s, %(doc)s, %(source)s, %(uri)s,
                    CASE WHEN 1 >= %(max)s THEN 'quarantined' ELSE 'failed' END, 1, %(error)s, %(hash)s, now())
            ON CONFLICT (space_no, doc_id) DO UPDATE SET
                attempts = CASE WHEN m.failed_hash = EXCLUDED.failed_hash THEN m.attempts + 1 ELSE 1 END,
                status = CASE WHEN (CASE WHEN m.failed_hash = EXCLUDED.failed_hash THEN m.attempts + 1 ELSE 1 END)
                                   >= %(max)s THEN 'quarantined' ELSE 'failed' END,
                last_error = EXCLUDED.last_error, failed_hash = EXCLUDED.failed_hash, updated_at = now()
            RETURNING status, attempts""").format(m=ident(n.manifest)),
            {"space": space_no, "doc": doc_id, "source": source, "uri": uri, "max": max_attempts,
             "error": error[:2000], "hash": failed_hash}).fetchone()
        conn.execute(sql.SQL("UPDATE {rd} SET outcome = %s WHERE run_id = %s AND doc_id = %s")
                     .format(rd=ident(n.run_docs)), (row[0], run_id, doc_id))
    return row[0], row[1]


def delete_documents(conn: psycopg.Connection, n: Names, *, table: str, space_no: int, owner: str,
                     run_id: str, release: int, manifest_now: bool) -> int:
    """Mark the run's ``deleted`` documents as gone in the candidate release (``rel_to = R``), in one
    transaction. Their manifest rows go when the release is published (at once in a never-published space)."""
    _require_idle(conn)
    with conn.transaction():
        lock.check(conn, n, owner)
        conn.execute(sql.SQL("""
            UPDATE {t} c SET rel_to = %s FROM {rd} r
            WHERE r.run_id = %s AND r.class = 'deleted' AND r.outcome IS NULL AND c.doc_id = r.doc_id
              AND c.rel_to IS NULL""").format(t=ident(table), rd=ident(n.run_docs)), (release, run_id))
        if manifest_now:
            conn.execute(sql.SQL("""
                DELETE FROM {m} m USING {rd} r
                WHERE r.run_id = %s AND r.class = 'deleted' AND r.outcome IS NULL
                  AND m.space_no = %s AND m.doc_id = r.doc_id""").format(m=ident(n.manifest), rd=ident(n.run_docs)),
                (run_id, space_no))
        deleted = conn.execute(sql.SQL("""
            UPDATE {rd} SET outcome = 'deleted' WHERE run_id = %s AND class = 'deleted' AND outcome IS NULL
            """).format(rd=ident(n.run_docs)), (run_id,)).rowcount
    return deleted
