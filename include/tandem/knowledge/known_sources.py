"""Which sources a run reads when none is named: the index remembers the ones it was published from.

Order: sources named by the caller (``--source``, the DAG run's conf); else ``TANDEM_SOURCES`` when it is set
to something other than its default; else the sources of the index's latest published release (its run
recorded them); else the default folder. A run that names other sources than the index's goes through the
usual plan and delete brake. The choice is logged and lands in the summary (``sources_from``).
"""

from __future__ import annotations

import logging

from psycopg import sql

from tandem import db
from tandem.config import Settings
from tandem.db import ident
from tandem.knowledge import store

log = logging.getLogger(__name__)


def published_sources(settings: Settings) -> list[str] | None:
    """The sources (``name=root``) of the run that published the latest release, or None (no such release)."""
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        if not store.exists(conn, n.releases):
            return None
        row = conn.execute(sql.SQL("""
            SELECT r.params -> 'sources' FROM {rel} rel JOIN {runs} r ON r.run_id = rel.run_id
            WHERE rel.status = 'published' ORDER BY rel.index_version DESC LIMIT 1""")
                           .format(rel=ident(n.releases), runs=ident(n.runs))).fetchone()
        conn.commit()
    return list(row[0]) if row and row[0] else None


def resolve(settings: Settings, given=None) -> tuple[list[str], str]:
    """The source specs a run reads, and where they came from: given, configured, index or default."""
    if given:
        return list(given), "given"
    if not settings.is_default("sources"):
        return list(settings.sources), "configured"
    remembered = published_sources(settings)
    if remembered:
        log.info("no source named: using the sources index %s was last published from: %s", settings.index_name,
                 ", ".join(remembered))
        return remembered, "index"
    return list(settings.sources), "default"
