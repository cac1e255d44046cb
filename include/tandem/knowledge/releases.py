"""Knowledge releases: nothing a reindex writes is served until its canary passed and it was published.

Every chunk row carries the releases in which it is visible: ``rel_from`` (the release that wrote it) and
``rel_to`` (the release that replaced or deleted it; NULL while it is current). A reader of release ``P``
sees the rows with ``rel_from <= P AND (rel_to IS NULL OR rel_to > P)``. The live space's row in
``kn_NAME_spaces`` holds ``P``, the published release: searches, answers, evals and the ``kn_NAME_live`` view
all read it first, then filter on it.

- A run that writes allocates a candidate release ``R`` (above every release so far). Its new chunks get
  ``rel_from = R``; the rows they replace, and the rows of deleted documents, get ``rel_to = R``. Readers of
  ``P < R`` see none of it, and the rows they do see are never deleted or changed in a way they notice.
- Publishing is one short transaction: the spaces row gets ``R``, the run's written and deleted documents
  are applied to the manifest, the release row becomes ``published``. Its cost grows with the changed
  documents, not with the index (no table copy).
- A run that fails (a canary regression, a dead batch, kill -9) publishes nothing: ``P`` is unchanged. The
  next run in that space discards the unpublished rows first (``discard``).
- A space that was never published (a shadow build of a new embedding space) is the exception: its
  manifest is written as documents are, so that a crashed build resumes where it stopped.
- ``rollback`` moves ``P`` back to the previous published release, in the same space or in the previous
  space. ``collect`` deletes rows that no kept release can see (the newest ``keep_releases`` of a space).
"""

from __future__ import annotations

import json
import logging

import psycopg
from psycopg import sql

from tandem.db import ident
from tandem.errors import UserError
from tandem.knowledge import spaces, store
from tandem.knowledge.store import Names

log = logging.getLogger(__name__)

SERVED = ("published", "expired")  # statuses of releases that were served and not rolled back


def live_release(conn: psycopg.Connection, n: Names) -> tuple[spaces.Space, int] | None:
    """(live space, published release), or None when nothing was published yet."""
    live = spaces.live(conn, n)
    if live is None or live.index_version is None:
        return None
    return live, live.index_version


def discard(conn: psycopg.Connection, n: Names, space: spaces.Space) -> dict:
    """Remove what unpublished releases wrote into a published space (caller's transaction): rows they added
    are deleted, rows they superseded are current again. Readers never saw either change."""
    if space.index_version is None:
        return {"deleted_rows": 0, "restored_rows": 0}
    t = ident(space.table)
    deleted = conn.execute(sql.SQL("DELETE FROM {t} WHERE rel_from > %s").format(t=t), (space.index_version,)).rowcount
    restored = conn.execute(sql.SQL("UPDATE {t} SET rel_to = NULL WHERE rel_to > %s").format(t=t),
                            (space.index_version,)).rowcount
    if deleted or restored:
        log.info("discarded unpublished rows in space %s: %d added rows deleted, %d superseded rows restored",
                 space.space_no, deleted, restored)
    return {"deleted_rows": deleted, "restored_rows": restored}


def allocate(conn: psycopg.Connection, n: Names, space_no: int, run_id: str) -> int:
    """A new candidate release number (caller's transaction, under the lease). Candidates left by dead runs
    are recorded as failed."""
    r = ident(n.releases)
    conn.execute(sql.SQL("""UPDATE {r} SET status = 'failed', ended_at = now(),
                            message = coalesce(message, 'the run stopped before publishing (abandoned)')
                            WHERE status = 'candidate'""").format(r=r))
    release = conn.execute(sql.SQL("SELECT coalesce(max(index_version), 0) + 1 FROM {r}").format(r=r)).fetchone()[0]
    conn.execute(sql.SQL("INSERT INTO {r} (index_version, space_no, run_id, status) VALUES (%s, %s, %s, 'candidate')")
                 .format(r=r), (release, space_no, run_id))
    return release


def published_by(conn: psycopg.Connection, n: Names, release: int, run_id: str) -> dict | None:
    """The release row when ``run_id`` already published ``release`` (a retried finalize must not publish
    again); None otherwise."""
    row = conn.execute(sql.SQL("""SELECT index_version, canary FROM {r}
                                  WHERE index_version = %s AND run_id = %s AND status = 'published'""")
                       .format(r=ident(n.releases)), (release, run_id)).fetchone()
    return None if row is None else {"index_version": row[0], "canary": row[1]}


def fail(conn: psycopg.Connection, n: Names, release: int, message: str, counts: dict | None = None,
         canary: dict | None = None) -> None:
    conn.execute(sql.SQL("""UPDATE {r} SET status = 'failed', ended_at = now(), message = %s,
                            counts = coalesce(%s, counts), canary = coalesce(%s, canary)
                            WHERE index_version = %s AND status = 'candidate'""").format(r=ident(n.releases)),
                 (message[:2000], _j(counts), _j(canary), release))


def forget(conn: psycopg.Connection, n: Names, release: int) -> None:
    """A candidate that wrote nothing is not a release (numbers stay without gaps for no-change runs)."""
    conn.execute(sql.SQL("DELETE FROM {r} WHERE index_version = %s AND status = 'candidate'")
                 .format(r=ident(n.releases)), (release,))


def publish(conn: psycopg.Connection, n: Names, space: spaces.Space, release: int, run_id: str, *,
            switch: bool, counts: dict, canary: dict | None) -> list[str]:
    """Make ``release`` the one users are served (caller's transaction, under the lease). Returns tables to
    drop after commit (a space switch retires the space before the previous one)."""
    drop: list[str] = []
    if switch:
        drop = spaces.activate(conn, n, space, release)
    else:
        spaces.set_release(conn, n, space.space_no, release)
    apply_manifest(conn, n, space.space_no, run_id, release)
    conn.execute(sql.SQL("""UPDATE {r} SET status = 'published', published_at = now(), counts = %s, canary = %s
                            WHERE index_version = %s""").format(r=ident(n.releases)), (_j(counts), _j(canary), release))
    return drop


def apply_manifest(conn: psycopg.Connection, n: Names, space_no: int, run_id: str, release: int,
                   doc_id: str | None = None) -> None:
    """The run's written and deleted documents (or only ``doc_id``), applied to the manifest (one statement
    each)."""
    m, rd = ident(n.manifest), ident(n.run_docs)
    conn.execute(sql.SQL("""
        INSERT INTO {m} (space_no, doc_id, source, uri, title, content_hash, chunk_count, status, attempts,
                         last_error, failed_hash, index_version, updated_at, indexed_at)
        SELECT %(space)s, doc_id, source, uri, title, content_hash, chunk_count, 'indexed', 0, NULL, NULL,
               %(release)s, now(), now()
        FROM {rd} WHERE run_id = %(run)s AND outcome = 'written' AND (%(doc)s::text IS NULL OR doc_id = %(doc)s)
        ON CONFLICT (space_no, doc_id) DO UPDATE SET
            source = EXCLUDED.source, uri = EXCLUDED.uri, title = EXCLUDED.title,
            content_hash = EXCLUDED.content_hash, chunk_count = EXCLUDED.chunk_count, status = 'indexed',
            attempts = 0, last_error = NULL, failed_hash = NULL, index_version = EXCLUDED.index_version,
            updated_at = now(), indexed_at = now()""").format(m=m, rd=rd),
        {"space": space_no, "release": release, "run": run_id, "doc": doc_id})
    conn.execute(sql.SQL("""
        DELETE FROM {m} m USING {rd} r
        WHERE r.run_id = %s AND r.outcome = 'deleted' AND m.space_no = %s AND m.doc_id = r.doc_id
          AND (%s::text IS NULL OR r.doc_id = %s)""").format(m=m, rd=rd), (run_id, space_no, doc_id, doc_id))


def collect(conn: psycopg.Connection, n: Names, space: spaces.Space, keep: int) -> dict:
    """Delete the rows that none of the newest ``keep`` served releases of ``space`` can see; older releases
    of the space become ``expired`` (no longer a rollback target). Caller's transaction."""
    r = ident(n.releases)
    kept = [row[0] for row in conn.execute(sql.SQL("""
        SELECT index_version FROM {r} WHERE space_no = %s AND status = 'published'
        ORDER BY index_version DESC LIMIT %s""").format(r=r), (space.space_no, max(1, keep)))]
    if not kept:
        return {"rows": 0, "expired": 0}
    oldest = min(kept)
    rows = conn.execute(sql.SQL("DELETE FROM {t} WHERE rel_to IS NOT NULL AND rel_to <= %s")
                        .format(t=ident(space.table)), (oldest,)).rowcount
    expired = conn.execute(sql.SQL("""UPDATE {r} SET status = 'expired', ended_at = now()
                                      WHERE space_no = %s AND status = 'published' AND index_version < %s""")
                           .format(r=r), (space.space_no, oldest)).rowcount
    return {"rows": rows, "expired": expired, "oldest_kept": oldest}


def rewind_manifest(conn: psycopg.Connection, n: Names, space: spaces.Space, current: int, target: int) -> int:
    """Rebuild the manifest rows of the documents that changed between ``target`` and ``current`` (both
    releases of ``space``) from the chunk rows ``target`` sees. Returns the number of documents."""
    t, m = ident(space.table), ident(n.manifest)
    lo, hi = sorted((current, target))
    docs = [row[0] for row in conn.execute(sql.SQL("""
        SELECT DISTINCT doc_id FROM {t} WHERE (rel_from > %(lo)s AND rel_from <= %(hi)s)
                                         OR (rel_to > %(lo)s AND rel_to <= %(hi)s)""").format(t=t),
        {"lo": lo, "hi": hi})]
    if not docs:
        return 0
    conn.execute(sql.SQL("DELETE FROM {m} WHERE space_no = %s AND doc_id = ANY(%s)").format(m=m),
                 (space.space_no, docs))
    where, params = store.visible(target)
    conn.execute(sql.SQL("""
        INSERT INTO {m} (space_no, doc_id, source, uri, title, content_hash, chunk_count, status, index_version,
                         indexed_at)
        SELECT %s, doc_id, min(source), min(uri), min(title), min(doc_hash), count(*), 'indexed',
               max(rel_from), now()
        FROM {t} WHERE doc_id = ANY(%s) AND {w} GROUP BY doc_id""").format(m=m, t=t, w=where),
        [space.space_no, docs, *params])
    return len(docs)


def rollback(conn: psycopg.Connection, n: Names) -> dict:
    """Serve the previous published release again, in the same space or the previous one (caller holds the
    lease; commits). The release that was live becomes ``rolled_back``."""
    if not store.exists(conn, n.spaces):
        raise UserError(f"index {n.index!r} has not been built yet: nothing to roll back",
                        fix="run `tandem reindex` first")
    conn.commit()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("tandem-spaces-" + n.index,))
        now = live_release(conn, n)
        if now is None:
            raise UserError(f"index {n.index!r} has no published release", fix="run `tandem reindex` first")
        space, current = now
        row = conn.execute(sql.SQL("""
            SELECT r.index_version, r.space_no FROM {r} r JOIN {s} s ON s.space_no = r.space_no
            WHERE r.status = 'published' AND r.index_version < %s AND s.status IN ('live', 'previous')
            ORDER BY r.index_version DESC LIMIT 1""").format(r=ident(n.releases), s=ident(n.spaces)),
            (current,)).fetchone()
        if row is None:
            raise UserError(f"index {n.index!r} keeps no release before {current} to roll back to",
                            fix="releases older than TANDEM_KEEP_RELEASES (and the space before the previous "
                                "one) are not kept; see `tandem index releases`")
        target, target_space_no = row
        conn.execute(sql.SQL("UPDATE {r} SET status = 'rolled_back', ended_at = now() WHERE index_version = %s")
                     .format(r=ident(n.releases)), (current,))
        s = ident(n.spaces)
        if target_space_no == space.space_no:
            rewind_manifest(conn, n, space, current, target)
            spaces.set_release(conn, n, space.space_no, target)
            to_space = space
        else:
            to_space = spaces.by_status(conn, n, "previous")  # the only other space with a table
            conn.execute(sql.SQL("UPDATE {s} SET status = 'rolled_back' WHERE space_no = %s").format(s=s),
                         (space.space_no,))
            conn.execute(sql.SQL("UPDATE {s} SET status = 'live', index_version = %s, activated_at = now() "
                                 "WHERE space_no = %s").format(s=s), (target, to_space.space_no))
            if to_space.index_version != target:
                rewind_manifest(conn, n, to_space, to_space.index_version, target)
            store.point_live_view(conn, n, to_space.space_no, to_space.table)
    return {"index_version": target, "space": to_space.space_no,
            "fingerprint": to_space.fingerprint, "rolled_back_index_version": current,
            "rolled_back_space": space.space_no, "rolled_back_fingerprint": space.fingerprint,
            "space_changed": to_space.space_no != space.space_no}


def listing(conn: psycopg.Connection, n: Names, limit: int = 50) -> list[dict]:
    """The releases, newest first, with their run, counts and canary figures, and which one is live."""
    if not store.exists(conn, n.releases):
        return []
    now = live_release(conn, n)
    live_no = now[1] if now else None
    out = []
    for rel, space_no, run_id, status, counts, canary, message, created, published, ended in conn.execute(sql.SQL("""
            SELECT index_version, space_no, run_id, status, counts, canary, message, created_at, published_at, ended_at
            FROM {r} ORDER BY index_version DESC LIMIT %s""").format(r=ident(n.releases)), (limit,)):
        canary = canary or {}
        out.append({"index_version": rel, "space": space_no, "run_id": run_id,
                    "status": status, "live": rel == live_no, "counts": counts or {},
                    "canary": {k: canary.get(k) for k in ("status", "hit_at_k", "mrr", "k", "reason") if k in canary},
                    "message": message, "created_at": str(created),
                    "published_at": str(published) if published else None, "ended_at": str(ended) if ended else None})
    return out


def canary_history(conn: psycopg.Connection, n: Names, golden_sha: str, k: int, limit: int) -> list[dict]:
    """Canary figures of the newest ``limit`` served releases measured with this golden set and k (newest
    first): the canary's baseline and floor."""
    rows = conn.execute(sql.SQL("""
        SELECT index_version, run_id, canary FROM {r}
        WHERE status = ANY(%s) AND canary->>'golden_sha256' = %s AND (canary->>'k')::int = %s
          AND canary ? 'hit_at_k'
        ORDER BY index_version DESC LIMIT %s""").format(r=ident(n.releases)), (list(SERVED), golden_sha, k, limit))
    return [{**canary, "index_version": rel, "run_id": run_id} for rel, run_id, canary in rows]


def _j(value) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)
