"""Embedding-space versions: one chunk table per fingerprint, a live pointer, shadow builds, rollback.

- The configured fingerprint equals the live space's: the run writes a candidate release into the live
  table (invisible to readers until it is published, see ``releases``).
- It differs (a new model, dimension, chunker or normalisation): the run builds (or resumes) a ``building``
  space beside the live one, validates it with the canary, then switches atomically: in one transaction the
  spaces rows change status and the ``kn_NAME_live`` view is re-pointed. Queries read one table only.
- The space that was live becomes ``previous`` and is kept for ``tandem index rollback``; the one before it
  is retired and its table dropped.
- The index version users see is the published release number of the live space (``index_version``).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import psycopg
from psycopg import sql

from tandem.db import ident
from tandem.errors import UserError
from tandem.knowledge import store
from tandem.knowledge.store import Names

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Space:
    space_no: int
    fingerprint: str
    spec: dict
    table: str
    dim: int
    status: str
    index_version: int | None  # the release this space publishes; None while it was never published

    @property
    def published(self) -> bool:
        return self.index_version is not None


_COLS = "space_no, fingerprint, spec, table_name, dim, status, index_version"


def _row(row) -> Space:
    spec = row[2] if isinstance(row[2], dict) else json.loads(row[2])
    return Space(space_no=row[0], fingerprint=row[1], spec=spec, table=row[3], dim=row[4], status=row[5],
                 index_version=row[6])


def by_status(conn: psycopg.Connection, n: Names, status: str) -> Space | None:
    if not store.exists(conn, n.spaces):
        return None
    row = conn.execute(sql.SQL("SELECT " + _COLS + " FROM {s} WHERE status = %s ORDER BY space_no DESC LIMIT 1")
                       .format(s=ident(n.spaces)), (status,)).fetchone()
    return _row(row) if row else None


def live(conn: psycopg.Connection, n: Names) -> Space | None:
    return by_status(conn, n, "live")


def by_fingerprint(conn: psycopg.Connection, n: Names, fingerprint: str) -> Space | None:
    if not store.exists(conn, n.spaces):
        return None
    row = conn.execute(sql.SQL("SELECT " + _COLS + " FROM {s} WHERE fingerprint = %s").format(s=ident(n.spaces)),
                       (fingerprint,)).fetchone()
    return _row(row) if row else None


def target(conn: psycopg.Connection, n: Names, fingerprint: str, spec: dict, dim: int, *,
           full: bool, create: bool = True) -> tuple[Space | None, str]:
    """The space this run writes to, and the mode: ``incremental`` (the live space), ``build`` (a new or
    resumed shadow). With ``create=False`` (dry run) nothing is created and the space may be None."""
    current = live(conn, n)
    if current is not None and current.fingerprint == fingerprint:
        return current, "incremental"
    existing = by_fingerprint(conn, n, fingerprint)
    if existing is not None and existing.status == "rolled_back" and not full:
        raise UserError(
            f"the configured embedding space {fingerprint} was rolled back "
            f"(the live index is version {current.index_version if current else '-'} with fingerprint "
            f"{current.fingerprint if current else '-'})",
            fix="set the embedding settings (model, chunk size/overlap) back to those of the live space, "
                "or run with --full (full_rebuild) to rebuild and re-validate the rolled-back space")
    if not create:
        return existing, "build"
    if existing is not None:
        if existing.status != "building":
            conn.execute(sql.SQL("UPDATE {s} SET status = 'building' WHERE space_no = %s").format(s=ident(n.spaces)),
                         (existing.space_no,))
        store.create_chunk_table(conn, n, existing.space_no, existing.dim, hnsw=False)
        conn.commit()
        log.info("resuming the shadow build of space %s (fingerprint %s)", existing.space_no, fingerprint)
        return dataclasses.replace(existing, status="building"), "build"
    row = conn.execute(sql.SQL("""
        INSERT INTO {s} (fingerprint, spec, table_name, dim, status)
        VALUES (%s, %s, '', %s, 'building') RETURNING space_no""").format(s=ident(n.spaces)),
        (fingerprint, json.dumps(spec), dim)).fetchone()
    space_no = row[0]
    table = store.create_chunk_table(conn, n, space_no, dim, hnsw=False)  # HNSW built once filled (finalize)
    conn.execute(sql.SQL("UPDATE {s} SET table_name = %s WHERE space_no = %s").format(s=ident(n.spaces)),
                 (table, space_no))
    conn.commit()
    log.info("building a new embedding space %s (fingerprint %s) in %s", space_no, fingerprint, table)
    return Space(space_no, fingerprint, spec, table, dim, "building", None), "build"


def activate(conn: psycopg.Connection, n: Names, space: Space, index_version: int) -> list[str]:
    """Switch ``space`` live with ``index_version`` published, atomically (caller commits). Returns the tables to
    drop after commit (the space before the previous one, and rolled-back spaces)."""
    s = ident(n.spaces)
    old_previous = by_status(conn, n, "previous")
    old_live = live(conn, n)
    retire = [sp for sp in (old_previous,) if sp is not None and sp.space_no != space.space_no]
    retire += [_row(r) for r in conn.execute(sql.SQL("SELECT " + _COLS + " FROM {s} WHERE status = 'rolled_back' "
                                                     "AND space_no <> %s").format(s=s), (space.space_no,))]
    for sp in retire:
        conn.execute(sql.SQL("UPDATE {s} SET status = 'retired' WHERE space_no = %s").format(s=s), (sp.space_no,))
        conn.execute(sql.SQL("DELETE FROM {m} WHERE space_no = %s").format(m=ident(n.manifest)), (sp.space_no,))
        conn.execute(sql.SQL("""UPDATE {r} SET status = 'expired', ended_at = now()
                                WHERE space_no = %s AND status = 'published'""").format(r=ident(n.releases)),
                     (sp.space_no,))
    if old_live is not None and old_live.space_no != space.space_no:
        conn.execute(sql.SQL("UPDATE {s} SET status = 'previous' WHERE space_no = %s").format(s=s),
                     (old_live.space_no,))
    conn.execute(sql.SQL("UPDATE {s} SET status = 'live', index_version = %s, activated_at = now() WHERE space_no = %s")
                 .format(s=s), (index_version, space.space_no))
    store.point_live_view(conn, n, space.space_no, space.table)
    return [sp.table for sp in retire]


def drop_tables(conn: psycopg.Connection, tables: list[str]) -> None:
    for table in tables:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=ident(table)))
    conn.commit()


def set_release(conn: psycopg.Connection, n: Names, space_no: int, index_version: int) -> None:
    """Publish ``index_version`` in a space that is already live (caller's transaction): one row."""
    conn.execute(sql.SQL("UPDATE {s} SET index_version = %s WHERE space_no = %s").format(s=ident(n.spaces)),
                 (index_version, space_no))
