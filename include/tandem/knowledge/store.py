"""Table names and schema of a knowledge index.

Every table of index ``NAME`` is prefixed ``kn_NAME_``:

- ``kn_NAME_spaces``: one row per embedding space (fingerprint -> chunk table, status, the release it
  publishes). Exactly one space is ``live``; the one before it is ``previous`` (kept for rollback); a space
  being built beside the live one is ``building``.
- ``kn_NAME_chunks_<space_no>``: the chunks of one space (text, context, embedding, tsvector). Every row
  carries the releases in which it is visible: ``rel_from`` (the release that wrote it) and ``rel_to`` (the
  release that replaced or deleted it; NULL while current). See ``releases``.
- ``kn_NAME_live``: a view over the published release of the live space (switched atomically with the
  spaces row).
- ``kn_NAME_releases``: one row per release: its space, run, status, counts and canary figures.
- ``kn_NAME_manifest``: one row per (space, document) as of the space's published release: uri, content
  hash, chunk count, status, attempts, last error, release, timestamps. The diff joins the scan against it.
- ``kn_NAME_runs`` / ``kn_NAME_run_docs``: each run's plan (document classes and batches, and what each
  written document became), summary and canary metrics.
- ``kn_NAME_checks``: the results of ``tandem index verify``.
- ``kn_NAME_lease``: who is running a reindex of this index (see ``lock``).

All identifiers go through ``tandem.db.ident``; all values are parameters.
"""

from __future__ import annotations

import dataclasses

import psycopg
from psycopg import sql

from tandem.db import ident
from tandem.errors import UserError

PREFIX = "kn_"
MAX_INDEX_NAME = 30


@dataclasses.dataclass(frozen=True)
class Names:
    index: str

    def _t(self, suffix: str) -> str:
        return f"{PREFIX}{self.index}_{suffix}"

    @property
    def spaces(self) -> str:
        return self._t("spaces")

    @property
    def manifest(self) -> str:
        return self._t("manifest")

    @property
    def runs(self) -> str:
        return self._t("runs")

    @property
    def run_docs(self) -> str:
        return self._t("run_docs")

    @property
    def lease(self) -> str:
        return self._t("lease")

    @property
    def releases(self) -> str:
        return self._t("releases")

    @property
    def checks(self) -> str:
        return self._t("checks")

    @property
    def live_view(self) -> str:
        return self._t("live")

    def chunks(self, space_no: int) -> str:
        return self._t(f"chunks_{int(space_no)}")

    def id(self, name: str) -> sql.Identifier:
        return ident(name)


def names(index_name: str) -> Names:
    if not isinstance(index_name, str) or not index_name or len(index_name) > MAX_INDEX_NAME:
        raise UserError(f"invalid index name {index_name!r}",
                        fix=f"set TANDEM_INDEX_NAME to 1..{MAX_INDEX_NAME} lowercase letters, digits or underscores")
    ident(PREFIX + index_name)  # validates the characters
    return Names(index_name)


def exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


# The bookkeeping tables of an index, in creation order: (Names attribute, column definitions).
_TABLES = (
    ("spaces", """
            space_no      serial PRIMARY KEY,
            fingerprint   text NOT NULL UNIQUE,
            spec          jsonb NOT NULL,
            table_name    text NOT NULL,
            dim           integer NOT NULL,
            status        text NOT NULL CHECK (status IN ('building', 'live', 'previous', 'retired', 'rolled_back')),
            index_version integer,
            created_at    timestamptz NOT NULL DEFAULT now(),
            activated_at  timestamptz
    """),
    ("manifest", """
            space_no      integer NOT NULL,
            doc_id        text NOT NULL,
            source        text NOT NULL,
            uri           text NOT NULL,
            title         text,
            content_hash  text,
            chunk_count   integer NOT NULL DEFAULT 0,
            status        text NOT NULL CHECK (status IN ('indexed', 'failed', 'quarantined')),
            attempts      integer NOT NULL DEFAULT 0,
            last_error    text,
            failed_hash   text,
            index_version integer,
            first_seen_at timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            indexed_at    timestamptz,
            PRIMARY KEY (space_no, doc_id)
    """),
    ("runs", """
            run_id        text PRIMARY KEY,
            space_no      integer,
            mode          text NOT NULL,
            status        text NOT NULL,
            owner         text NOT NULL,
            index_version integer,
            params        jsonb NOT NULL DEFAULT '{{}}',
            plan          jsonb NOT NULL DEFAULT '{{}}',
            summary       jsonb,
            canary        jsonb,
            started_at    timestamptz NOT NULL DEFAULT now(),
            finished_at   timestamptz
    """),
    ("run_docs", """
            run_id        text NOT NULL,
            doc_id        text NOT NULL,
            class         text NOT NULL,
            uri           text NOT NULL,
            source        text NOT NULL,
            batch_no      integer,
            outcome       text,
            content_hash  text,
            title         text,
            chunk_count   integer,
            planned_hash  text,
            PRIMARY KEY (run_id, doc_id)
    """),
    ("releases", """
            index_version integer PRIMARY KEY,
            space_no      integer NOT NULL,
            run_id        text NOT NULL,
            status        text NOT NULL
                          CHECK (status IN ('candidate', 'failed', 'published', 'rolled_back', 'expired')),
            counts        jsonb NOT NULL DEFAULT '{{}}',
            canary        jsonb,
            message       text,
            created_at    timestamptz NOT NULL DEFAULT now(),
            published_at  timestamptz,
            ended_at      timestamptz
    """),
    ("checks", """
            check_id      serial PRIMARY KEY,
            index_version integer,
            ok            boolean NOT NULL,
            report        jsonb NOT NULL,
            repair_index_version integer,
            started_at    timestamptz NOT NULL,
            finished_at   timestamptz NOT NULL DEFAULT now()
    """),
    ("lease", """
            index_name    text PRIMARY KEY,
            owner         text,
            backend_pid   integer,
            acquired_at   timestamptz,
            heartbeat_at  timestamptz
    """),
)


def ensure_schema(conn: psycopg.Connection, n: Names) -> None:
    """Create the index's bookkeeping tables if missing (idempotent; commits)."""
    i = n.id
    # concurrent first runs would race on CREATE ... IF NOT EXISTS (pg_type unique violations)
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('tandem-knowledge-schema'))")
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    for attr, columns in _TABLES:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {t} (" + columns + ")").format(t=i(getattr(n, attr))))
        if attr == "spaces":
            conn.execute(sql.SQL("""
                CREATE UNIQUE INDEX IF NOT EXISTS {idx} ON {spaces} (status) WHERE status = 'live'
                """).format(idx=i(n.spaces + "_one_live"), spaces=i(n.spaces)))
    # the hash the plan saw: a batch that reads other bytes (the file changed since) indexes nothing for it
    conn.execute(sql.SQL("ALTER TABLE {rd} ADD COLUMN IF NOT EXISTS planned_hash text").format(rd=i(n.run_docs)))
    _one_name_for_the_index_version(conn, n)
    _migrate_to_releases(conn, n)
    conn.commit()


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (table,))}


# Before the release number had one name: (table attribute, old column, new column).
_RENAMED = (("spaces", "release_no", "index_version"), ("runs", "release_no", "index_version"),
            ("releases", "release_no", "index_version"), ("checks", "release_no", "index_version"),
            ("checks", "repair_release", "repair_index_version"))


def _one_name_for_the_index_version(conn: psycopg.Connection, n: Names) -> None:
    """An index made before the release number had one name (``release_no`` in four tables, a text
    ``index_version`` in the manifest) gets the one name, an integer everywhere, in place. Caller's
    transaction."""
    i = n.id
    for attr, old, new in _RENAMED:
        columns = _columns(conn, getattr(n, attr))
        if old in columns and new not in columns:
            conn.execute(sql.SQL("ALTER TABLE {t} RENAME COLUMN {old} TO {new}").format(
                t=i(getattr(n, attr)), old=sql.Identifier(old), new=sql.Identifier(new)))
    kind = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                        "AND attname = 'index_version' AND NOT attisdropped", (n.manifest,)).fetchone()
    if kind and kind[0] != "integer":
        conn.execute(sql.SQL("ALTER TABLE {m} ALTER COLUMN index_version TYPE integer "
                             "USING nullif(trim(index_version), '')::integer").format(m=i(n.manifest)))


def _migrate_to_releases(conn: psycopg.Connection, n: Names) -> None:
    """An index built before releases (chunk rows without ``rel_from``) becomes release-aware in place: each
    space that was served (live, previous) gets one published release holding all its rows; a shadow build
    keeps its rows as release 0 (visible to any candidate, so it resumes). Caller's transaction."""
    if "index_version" in _columns(conn, n.spaces):
        return
    i = n.id
    conn.execute(sql.SQL("ALTER TABLE {s} ADD COLUMN index_version integer").format(s=i(n.spaces)))
    conn.execute(sql.SQL("ALTER TABLE {r} ADD COLUMN IF NOT EXISTS index_version integer").format(r=i(n.runs)))
    for col in ("content_hash text", "title text", "chunk_count integer"):
        conn.execute(sql.SQL("ALTER TABLE {rd} ADD COLUMN IF NOT EXISTS " + col).format(rd=i(n.run_docs)))
    spaces_rows = conn.execute(sql.SQL("SELECT space_no, table_name, status FROM {s} WHERE status <> 'retired' "
                                       "ORDER BY space_no").format(s=i(n.spaces))).fetchall()
    release = 0
    for space_no, table, status in spaces_rows:
        rel = 0
        if status in ("live", "previous", "rolled_back"):
            release += 1
            rel = release
            conn.execute(sql.SQL("""INSERT INTO {r} (index_version, space_no, run_id, status, published_at, message)
                                    VALUES (%s, %s, 'migrated', %s, now(), 'the index as it was before releases')""")
                         .format(r=i(n.releases)), (rel, space_no, "rolled_back" if status == "rolled_back" else
                                                    "published"))
            conn.execute(sql.SQL("UPDATE {s} SET index_version = %s WHERE space_no = %s").format(s=i(n.spaces)),
                         (rel, space_no))
        if table and exists(conn, table) and "rel_from" not in _columns(conn, table):
            t = ident(table)
            conn.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN rel_from integer NOT NULL DEFAULT {rel}, "
                                 "ADD COLUMN rel_to integer").format(t=t, rel=sql.Literal(rel)))
            conn.execute(sql.SQL("ALTER TABLE {t} ALTER COLUMN rel_from DROP DEFAULT").format(t=t))
            conn.execute(sql.SQL("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {pk}").format(t=t, pk=ident(table + "_pkey")))
            conn.execute(sql.SQL("ALTER TABLE {t} ADD PRIMARY KEY (chunk_id, rel_from)").format(t=t))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (rel_from)").format(i=ident(table + "_relf"), t=t))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (rel_to) WHERE rel_to IS NOT NULL")
                         .format(i=ident(table + "_relt"), t=t))
        if status == "live":
            point_live_view(conn, n, space_no, table)


def create_chunk_table(conn: psycopg.Connection, n: Names, space_no: int, dim: int, *, hnsw: bool = True) -> str:
    """The chunk table of a space: HNSW (cosine) on the embedding, GIN on the tsvector. Returns its name.
    A space being built gets its HNSW index once filled (``ensure_hnsw``): one bulk build is much faster
    than growing the graph row by row, and nothing queries a space before it is switched in."""
    table = n.chunks(space_no)
    t = ident(table)
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {t} (
            chunk_id      text NOT NULL,
            rel_from      integer NOT NULL,
            rel_to        integer,
            doc_id        text NOT NULL,
            ordinal       integer NOT NULL,
            doc_hash      text NOT NULL,
            source        text NOT NULL,
            uri           text NOT NULL,
            title         text NOT NULL,
            heading_path  text NOT NULL,
            text          text NOT NULL,
            metadata      jsonb NOT NULL DEFAULT '{{}}',
            fingerprint   text NOT NULL,
            embedding     vector({dim}) NOT NULL,
            tsv           tsvector GENERATED ALWAYS AS (
                              setweight(to_tsvector('english', title), 'A') ||
                              setweight(to_tsvector('english', heading_path), 'B') ||
                              to_tsvector('english', text)) STORED,
            created_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (chunk_id, rel_from)
        )""").format(t=t, dim=sql.Literal(int(dim))))
    if dim <= 1024:  # keep vectors in the row (no TOAST): exact scans and re-ranking read them directly
        conn.execute(sql.SQL("ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE PLAIN").format(t=t))
    # keep the tsvector in the row too (compressed if need be): keyword ranking reads it for every candidate
    conn.execute(sql.SQL("ALTER TABLE {t} ALTER COLUMN tsv SET STORAGE MAIN").format(t=t))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (doc_id)").format(i=ident(table + "_doc"), t=t))
    # discarding a candidate and collecting superseded rows touch only the rows of a few releases
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (rel_from)").format(i=ident(table + "_relf"), t=t))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (rel_to) WHERE rel_to IS NOT NULL")
                 .format(i=ident(table + "_relt"), t=t))
    if hnsw:
        ensure_hnsw(conn, table)
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (tsv)").format(i=ident(table + "_tsv"), t=t))
    return table


def ensure_hnsw(conn: psycopg.Connection, table: str, maintenance_work_mem: str = "1GB") -> None:
    """Build the HNSW (cosine) index of a chunk table if it is missing (in the caller's transaction)."""
    conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (embedding vector_cosine_ops)")
                 .format(i=ident(table + "_hnsw"), t=ident(table)))


_VISIBLE = sql.SQL("(rel_from <= %s AND (rel_to IS NULL OR rel_to > %s))")


def visible(release: int) -> tuple[sql.Composable, list]:
    """The filter of the rows visible in ``release`` (a WHERE fragment and its parameters)."""
    return _VISIBLE, [int(release), int(release)]


def point_live_view(conn: psycopg.Connection, n: Names, space_no: int, table: str) -> None:
    """Re-point the stable view at the published release of ``table``'s space (in the caller's transaction:
    atomic with the spaces update). The view reads the release number from the spaces row, so publishing a
    release in the same space changes one row and leaves the view alone."""
    conn.execute(sql.SQL("DROP VIEW IF EXISTS {v}").format(v=ident(n.live_view)))
    conn.execute(sql.SQL("""
        CREATE VIEW {v} AS SELECT c.* FROM {t} c, (SELECT index_version FROM {s} WHERE space_no = {no}) p
        WHERE c.rel_from <= p.index_version AND (c.rel_to IS NULL OR c.rel_to > p.index_version)""").format(
        v=ident(n.live_view), t=ident(table), s=ident(n.spaces), no=sql.Literal(int(space_no))))
